// The engine's ids, in one small header for everything that only passes them around (the
// server's session table, the scheduler, the state manager).
#pragma once

#include <cstdint>

namespace lizard {

using StateId = uint64_t;    // a conversation's state; 0 = none (a one-shot request gets a temporary one)
using RequestId = uint64_t;  // one submitted request, from Engine::Submit until OnFinish

}  // namespace lizard
