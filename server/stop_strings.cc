#include "server/stop_strings.h"

#include <algorithm>
#include <utility>

namespace lizard::server {

StopStringMatcher::StopStringMatcher(std::vector<std::string> stop_strings)
    : stop_strings_(std::move(stop_strings)) {}

std::string StopStringMatcher::Push(std::string_view text) {
  if (stopped_) return "";
  held_.append(text);

  // The earliest stop string occurrence wins.
  size_t stop_at = std::string::npos;
  for (const std::string& stop : stop_strings_) {
    stop_at = std::min(stop_at, held_.find(stop));
  }
  if (stop_at != std::string::npos) {
    stopped_ = true;
    std::string out = held_.substr(0, stop_at);
    held_.clear();
    return out;
  }

  // Hold back the longest suffix that is a proper prefix of some stop string.
  size_t hold = 0;
  for (const std::string& stop : stop_strings_) {
    size_t max_len = std::min(held_.size(), stop.size() - 1);
    for (size_t len = max_len; len > hold; --len) {
      if (std::string_view(held_).substr(held_.size() - len) ==
          std::string_view(stop).substr(0, len)) {
        hold = len;
        break;
      }
    }
  }
  std::string out = held_.substr(0, held_.size() - hold);
  held_.erase(0, held_.size() - hold);
  return out;
}

std::string StopStringMatcher::Flush() { return std::exchange(held_, std::string()); }

}  // namespace lizard::server
