#include "tests/server/server_process.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <regex>
#include <sstream>
#include <thread>

#include "tests/model/test_util.h"

namespace lizard::testing {

ServerProcess::ServerProcess(const std::vector<std::string>& extra_flags) {
  char log_template[] = "/tmp/lizard-server-test-XXXXXX";
  const int log_fd = mkstemp(log_template);
  if (log_fd < 0) std::abort();
  log_path_ = log_template;

  // The environment can point the tests at a relocated bundle and add flags to every server
  // (the GPU run: LIZARD_TEST_SERVER_FLAGS="--backend cuda").
  const char* bin = std::getenv("LIZARD_SERVER_BIN");
  const char* model = std::getenv("LIZARD_TEST_MODEL_DIR");
  std::vector<std::string> args = {bin ? bin : LIZARD_SERVER_BIN, "--model",
                                   model ? model : LIZARD_TEST_MODEL_DIR,
                                   "--host", "127.0.0.1", "--port", "0", "--metrics-port", "0",
                                   "--http-port", "0"};
  if (const char* flags = std::getenv("LIZARD_TEST_SERVER_FLAGS")) {
    std::istringstream words(flags);
    for (std::string word; words >> word;) args.push_back(word);
  }
  args.insert(args.end(), extra_flags.begin(), extra_flags.end());
  pid_ = fork();
  if (pid_ == 0) {
    dup2(log_fd, STDOUT_FILENO);
    dup2(log_fd, STDERR_FILENO);
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  close(log_fd);

  const std::regex grpc_re(R"(grpc listening on 127\.0\.0\.1:(\d+))");
  const std::regex metrics_re(R"(metrics listening on 127\.0\.0\.1:(\d+))");
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (std::chrono::steady_clock::now() < deadline) {
    const std::string log = ReadFile(log_path_);
    std::smatch g, m;
    if (std::regex_search(log, g, grpc_re) && std::regex_search(log, m, metrics_re)) {
      grpc_port_ = std::stoi(g[1]);
      metrics_port_ = std::stoi(m[1]);
      return;
    }
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  std::cerr << "lizard-server did not start; its log:\n" << ReadFile(log_path_) << std::endl;
  std::abort();
}

ServerProcess::~ServerProcess() {
  if (pid_ > 0) {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
  std::remove(log_path_.c_str());
}

std::string ServerProcess::grpc_address() const {
  return "127.0.0.1:" + std::to_string(grpc_port_);
}

std::string HttpGet(int port, const std::string& path) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return "";
  }
  const std::string request =
      "GET " + path + " HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
  if (write(fd, request.data(), request.size()) != static_cast<ssize_t>(request.size())) {
    close(fd);
    return "";
  }
  std::string response;
  char buf[4096];
  for (ssize_t n; (n = read(fd, buf, sizeof(buf))) > 0;) response.append(buf, n);
  close(fd);
  const size_t body = response.find("\r\n\r\n");
  return body == std::string::npos ? "" : response.substr(body + 4);
}

double MetricValue(const std::string& page, const std::string& series) {
  std::istringstream lines(page);
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind(series + " ", 0) == 0) return std::stod(line.substr(series.size() + 1));
  }
  return -1;
}

}  // namespace lizard::testing
