// Process-wide: every thread stack request below kMinThreadStackBytes is
// raised to it, so that civetweb's 100 KB threads (under /metrics) can start
// in a process whose cuBLAS needs ~94 KB of static TLS per thread
// (docs/ARCHITECTURE.md, "Platform facts"). Compiled into each executable that
// links seer_server_lib (an interface source), which exports the symbol so
// that civetweb, a shared library, binds to it.

#include <dlfcn.h>
#include <pthread.h>

#include <cerrno>

#include "server/common/metrics.h"

extern "C" int pthread_attr_setstacksize(pthread_attr_t* attr, size_t stacksize) noexcept {
  using SetStackSize = int (*)(pthread_attr_t*, size_t);
  static const SetStackSize real = reinterpret_cast<SetStackSize>(dlsym(RTLD_NEXT, "pthread_attr_setstacksize"));
  if (real == nullptr) return ENOSYS;
  if (stacksize < seer::kMinThreadStackBytes) stacksize = seer::kMinThreadStackBytes;
  return real(attr, stacksize);
}
