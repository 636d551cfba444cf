// Fuzzes DecodeSessionBlob (ImportSession, the HTTP import and --state-dir files). Each input is
// decoded as given, and once more behind a valid header (magic, version, length and crc32 of the
// rest) so that the fuzzer also reaches the record's protobuf decoding. A decoded record must
// survive encoding and decoding again unchanged.
// The seed in corpus/session_blob is a small blob (a record with a few bytes of state).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>

#include <zlib.h>

#include "server/session_store.h"

namespace {

void DecodeAndRoundTrip(std::string_view bytes) {
  auto record = lizard::server::DecodeSessionBlob(bytes);
  if (!record.ok()) return;
  auto again = lizard::server::DecodeSessionBlob(lizard::server::EncodeSessionBlob(*record));
  if (!again.ok() || again->SerializeAsString() != record->SerializeAsString()) abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  DecodeAndRoundTrip(bytes);

  // The same bytes as a record behind a valid header.
  std::string blob = "LZSB";
  const uint32_t version = 1;
  const uint32_t crc = static_cast<uint32_t>(
      crc32_z(crc32_z(0L, Z_NULL, 0), reinterpret_cast<const Bytef*>(data), size));
  const uint64_t length = size;
  blob.append(reinterpret_cast<const char*>(&version), 4);
  blob.append(reinterpret_cast<const char*>(&crc), 4);
  blob.append(reinterpret_cast<const char*>(&length), 8);
  blob.append(bytes);
  DecodeAndRoundTrip(blob);
  return 0;
}
