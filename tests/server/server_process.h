// Runs the real lizard-server binary for integration tests: 127.0.0.1, free ports, log capture.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

namespace lizard::testing {

class ServerProcess {
 public:
  // Starts LIZARD_SERVER_BIN on LIZARD_TEST_MODEL_DIR with --host 127.0.0.1 --port 0
  // --metrics-port 0 plus `extra_flags` and waits (up to 30 s) for the "listening on" lines;
  // aborts the test binary on failure.
  explicit ServerProcess(const std::vector<std::string>& extra_flags);
  ~ServerProcess();  // SIGKILL if still running

  std::string grpc_address() const;
  int metrics_port() const { return metrics_port_; }

 private:
  pid_t pid_ = -1;
  std::string log_path_;
  int grpc_port_ = 0;
  int metrics_port_ = 0;
};

// GET http://127.0.0.1:port/path; returns the body ("" on failure).
std::string HttpGet(int port, const std::string& path);

// The value of one sample line "name{labels} value" of a Prometheus text page (-1 if absent).
double MetricValue(const std::string& page, const std::string& series);

}  // namespace lizard::testing
