// Stop strings matched on streamed text across token boundaries.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace lizard::server {

// Text arrives in pieces (one per token). The matcher releases text only once it can no longer
// be the start of a stop string, so a stop string split over several tokens is still found and
// never reaches the client. Stop strings must be non-empty, valid UTF-8; pushed text must be
// whole UTF-8 characters (then every release ends on a character boundary).
class StopStringMatcher {
 public:
  explicit StopStringMatcher(std::vector<std::string> stop_strings);

  // Adds text; returns the text that is safe to send now. When a stop string appears, returns
  // the text before it, drops the rest and sets stopped().
  std::string Push(std::string_view text);
  // The text still held back, for the end of a generation that did not stop on a string.
  std::string Flush();
  bool stopped() const { return stopped_; }

 private:
  std::vector<std::string> stop_strings_;
  std::string held_;
  bool stopped_ = false;
};

}  // namespace lizard::server
