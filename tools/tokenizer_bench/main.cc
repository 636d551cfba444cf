// lizard-tokenizer-bench: one-thread encode throughput of a tokenizer.json on a text file.
// The text is encoded paragraph by paragraph (pieces ending in a blank line), like a stream of
// prompts; tests/tokenizer/bench_reference.js cuts the text the same way.
// Usage: lizard-tokenizer-bench --tokenizer PATH --text FILE [--iterations N]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace {

double Seconds(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// CPU time of the process: on a shared machine it is steadier than wall time.
double CpuSeconds() { return static_cast<double>(std::clock()) / CLOCKS_PER_SEC; }

int Usage() {
  std::fprintf(stderr,
               "usage: lizard-tokenizer-bench --tokenizer PATH --text FILE [--iterations N]\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  std::string tokenizer_path, text_path;
  int iterations = 5;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--tokenizer") {
      tokenizer_path = argv[i + 1];
    } else if (flag == "--text") {
      text_path = argv[i + 1];
    } else if (flag == "--iterations") {
      iterations = std::max(1, std::atoi(argv[i + 1]));
    } else {
      return Usage();
    }
  }
  if (tokenizer_path.empty() || text_path.empty() || argc % 2 == 0) return Usage();

  std::ifstream in(text_path, std::ios::binary);
  if (!in) {
    std::fprintf(stderr, "cannot open %s\n", text_path.c_str());
    return 1;
  }
  std::stringstream buffer;
  buffer << in.rdbuf();
  const std::string text = buffer.str();
  std::vector<std::string_view> paragraphs;
  for (size_t begin = 0; begin < text.size();) {
    const size_t blank = text.find("\n\n", begin);
    const size_t end = blank == std::string::npos ? text.size() : blank + 2;
    paragraphs.push_back(std::string_view(text).substr(begin, end - begin));
    begin = end;
  }

  auto start = std::chrono::steady_clock::now();
  auto tokenizer = lizard::Tokenizer::FromFile(tokenizer_path);
  if (!tokenizer.ok()) {
    std::fprintf(stderr, "%s\n", tokenizer.status().ToString().c_str());
    return 1;
  }
  const double load_s = Seconds(start);

  // The first pass starts with an empty word cache; later passes show the steady state.
  std::vector<double> times, cpu_times;
  size_t num_tokens = 0;
  for (int it = 0; it < iterations + 1; ++it) {
    num_tokens = 0;
    start = std::chrono::steady_clock::now();
    const double cpu_start = CpuSeconds();
    for (const std::string_view paragraph : paragraphs) {
      auto ids = (*tokenizer)->Encode(paragraph, /*add_special_tokens=*/false);
      if (!ids.ok()) {
        std::fprintf(stderr, "%s\n", ids.status().ToString().c_str());
        return 1;
      }
      num_tokens += ids->size();
    }
    times.push_back(Seconds(start));
    cpu_times.push_back(CpuSeconds() - cpu_start);
  }
  const double mb = static_cast<double>(text.size()) / 1e6;
  auto steady_median = [](std::vector<double> t) {
    std::sort(t.begin() + 1, t.end());
    return t[1 + (t.size() - 1) / 2];
  };
  std::printf("lizard (C++)  %s: %.2f MB in %zu paragraphs, %zu tokens, load %.2f s\n",
              tokenizer_path.c_str(), mb, paragraphs.size(), num_tokens, load_s);
  std::printf("lizard (C++)  encode MB/s: first pass %.1f wall / %.1f cpu, steady (median of %d) "
              "%.1f wall / %.1f cpu\n",
              mb / times[0], mb / cpu_times[0], iterations, mb / steady_median(times),
              mb / steady_median(cpu_times));
  return 0;
}
