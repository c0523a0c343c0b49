// gRPC core experiments for a process that receives KV caches over gRPC
// (docs/KV_TRANSPORT.md, "Read wake-ups").
//
// gRPC 1.51 reads a stream in whatever pieces the socket has when its
// poller wakes, so a 4 MiB chunk arrives in many reads and wake-ups. Two of
// its experiments cut those down: tcp_frame_size_tuning lets the transport
// tell the endpoint how many bytes the frame it is reading still needs, and
// tcp_rcv_lowat sets SO_RCVLOWAT to that, so the kernel wakes the reader once
// they are there. On the 2-core dev machine they raised the KV stream
// bench's gRPC / raw TCP ratio in most runs: 17 of 24 at or above 0.6
// against 4 of 24 without (three sets of alternating pairs); either alone
// measured no better (docs/KV_TRANSPORT.md, section 7).
#pragma once

#include <string>

namespace seer {

// What seer-decode turns on by default (its --grpc-experiments).
inline constexpr char kBulkReceiveGrpcExperiments[] = "tcp_frame_size_tuning,tcp_rcv_lowat";

// Sets GRPC_EXPERIMENTS to `experiments` (gRPC's comma-separated list),
// unless the environment already sets it (the operator's setting wins) or
// `experiments` is empty. gRPC reads the variable once, when it first asks
// about an experiment: call this first in main, before any channel or server
// exists. Returns one line saying what was done, for the startup log.
std::string EnableGrpcExperiments(const std::string& experiments);

}  // namespace seer
