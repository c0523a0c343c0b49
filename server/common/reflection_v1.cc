#include "server/common/reflection_v1.h"

#include <set>

#include <google/protobuf/descriptor.h>
#include <google/protobuf/descriptor.pb.h>

namespace seer {
namespace {

namespace v1 = grpc::reflection::v1;
using google::protobuf::DescriptorPool;
using google::protobuf::FileDescriptor;

// `file` and, depth first, every file it imports, each once per response
// (clients build their pool from what they are sent).
void AddFile(const FileDescriptor* file, std::set<std::string>* sent, v1::FileDescriptorResponse* out) {
  if (!sent->insert(file->name()).second) return;
  google::protobuf::FileDescriptorProto proto;
  file->CopyTo(&proto);
  out->add_file_descriptor_proto(proto.SerializeAsString());
  for (int i = 0; i < file->dependency_count(); ++i) AddFile(file->dependency(i), sent, out);
}

void NotFound(v1::ServerReflectionResponse* response, const std::string& what) {
  v1::ErrorResponse* e = response->mutable_error_response();
  e->set_error_code(static_cast<int>(grpc::StatusCode::NOT_FOUND));
  e->set_error_message(what + " not found");
}

}  // namespace

grpc::Status ReflectionV1Service::ServerReflectionInfo(
    grpc::ServerContext* /*context*/,
    grpc::ServerReaderWriter<v1::ServerReflectionResponse, v1::ServerReflectionRequest>* stream) {
  const DescriptorPool* pool = DescriptorPool::generated_pool();
  v1::ServerReflectionRequest request;
  while (stream->Read(&request)) {
    std::set<std::string> sent;
    v1::ServerReflectionResponse response;
    response.set_valid_host(request.host());
    *response.mutable_original_request() = request;
    switch (request.message_request_case()) {
      case v1::ServerReflectionRequest::kListServices:
        for (const std::string& name : services_)
          response.mutable_list_services_response()->add_service()->set_name(name);
        break;
      case v1::ServerReflectionRequest::kFileByFilename:
        if (const FileDescriptor* f = pool->FindFileByName(request.file_by_filename())) {
          AddFile(f, &sent, response.mutable_file_descriptor_response());
        } else {
          NotFound(&response, "file " + request.file_by_filename());
        }
        break;
      case v1::ServerReflectionRequest::kFileContainingSymbol:
        if (const FileDescriptor* f = pool->FindFileContainingSymbol(request.file_containing_symbol())) {
          AddFile(f, &sent, response.mutable_file_descriptor_response());
        } else {
          NotFound(&response, "symbol " + request.file_containing_symbol());
        }
        break;
      case v1::ServerReflectionRequest::kFileContainingExtension: {
        const auto& ext = request.file_containing_extension();
        const google::protobuf::Descriptor* type = pool->FindMessageTypeByName(ext.containing_type());
        const google::protobuf::FieldDescriptor* field =
            type == nullptr ? nullptr : pool->FindExtensionByNumber(type, ext.extension_number());
        if (field != nullptr) {
          AddFile(field->file(), &sent, response.mutable_file_descriptor_response());
        } else {
          NotFound(&response, "extension " + std::to_string(ext.extension_number()) + " of " + ext.containing_type());
        }
        break;
      }
      case v1::ServerReflectionRequest::kAllExtensionNumbersOfType: {
        const google::protobuf::Descriptor* type = pool->FindMessageTypeByName(request.all_extension_numbers_of_type());
        if (type == nullptr) {
          NotFound(&response, "type " + request.all_extension_numbers_of_type());
          break;
        }
        std::vector<const google::protobuf::FieldDescriptor*> extensions;
        pool->FindAllExtensions(type, &extensions);
        v1::ExtensionNumberResponse* out = response.mutable_all_extension_numbers_response();
        out->set_base_type_name(type->full_name());
        for (const auto* e : extensions) out->add_extension_number(e->number());
        break;
      }
      default: {
        v1::ErrorResponse* e = response.mutable_error_response();
        e->set_error_code(static_cast<int>(grpc::StatusCode::UNIMPLEMENTED));
        e->set_error_message("unknown reflection request");
        break;
      }
    }
    if (!stream->Write(response)) break;
  }
  return grpc::Status::OK;
}

}  // namespace seer
