// ppmseg-run: a minimal native runner for a compiled PP-MobileSeg artifact
// (DIR/model.so + DIR/meta.json). Links only libtvm_runtime and libtvm_ffi and uses
// only the tvm-ffi headers.
//
//   ppmseg-run ARTIFACT_DIR (--input IMAGE.ppm | --raw X.bin) [-o LABELS.pgm]
//              [--color COLOR.ppm] [--bench N] [--warmup K] [--dump-input X.bin]
//   ppmseg-run ARTIFACT_DIR --input IMAGE.ppm|DIR [--input ...] [-o OUT_DIR] [--color OUT_DIR]
//
// The second form segments many PPM files with the library loaded once (a folder on the
// phone in one process); a bad file is reported in one line and skipped.
//
// Preprocessing reproduces model/image.py::normalize_image bit for bit: bilinear resize
// with half-pixel centres and no antialias (OpenCV's INTER_LINEAR, as PaddleSeg), then
// /255 and (x - mean) / std, all in float32 with one rounding per operation, in the
// same order as the NumPy code. The file is compiled with -ffp-contract=off so that
// the compiler fuses no multiply-add.
//
// Build: ppmseg build-runner -o build/ppmseg-run (see pipeline/deploy/native/__init__.py).

#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

namespace ffi = tvm::ffi;

namespace {

#ifndef PPMSEG_TVM_VERSION
#define PPMSEG_TVM_VERSION ""
#endif
#ifndef PPMSEG_TVM_FFI_VERSION
#define PPMSEG_TVM_FFI_VERSION ""
#endif

#if defined(__x86_64__)
constexpr uint16_t kHostMachine = 0x3E;
constexpr const char* kHostArch = "x86_64";
#elif defined(__aarch64__)
constexpr uint16_t kHostMachine = 0xB7;
constexpr const char* kHostArch = "aarch64";
#else
#error "ppmseg-run supports x86_64 and aarch64"
#endif

// Every expected failure: one line on stderr, exit code 1 (2 for usage errors).
struct Failure : std::runtime_error {
  int code;
  explicit Failure(const std::string& msg, int code = 1) : std::runtime_error(msg), code(code) {}
};

[[noreturn]] void fail(const std::string& msg) { throw Failure(msg); }

std::string first_line(const std::string& s) {
  std::string line = s.substr(0, s.find('\n'));
  return line.empty() ? "unknown error" : line;
}

// ---------------------------------------------------------------- files

std::vector<uint8_t> read_file(const std::string& path, const char* what) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail(path + ": no such file (" + what + ")");
  std::vector<uint8_t> data((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  if (f.bad()) fail(path + ": read error");
  return data;
}

// Output files are written under a temporary name beside their place and renamed into place
// together by commit(): a failure leaves no half-written file, nor one file of a pair.
class StagedFiles {
 public:
  StagedFiles() = default;
  StagedFiles(const StagedFiles&) = delete;
  StagedFiles& operator=(const StagedFiles&) = delete;
  ~StagedFiles() {
    for (const auto& f : files_) std::remove(f.first.c_str());
  }
  void write(const std::string& path, const std::string& header, const uint8_t* data, size_t n) {
    const size_t slash = path.rfind('/');
    const std::string dir = slash == std::string::npos ? "" : path.substr(0, slash + 1);
    const std::string tmp = dir + "." + path.substr(dir.size()) + "." + std::to_string(getpid()) + ".tmp";
    files_.emplace_back(tmp, path);
    std::FILE* f = std::fopen(tmp.c_str(), "wb");
    if (!f) fail(path + ": cannot write (" + std::strerror(errno) + ")");
    bool ok = std::fwrite(header.data(), 1, header.size(), f) == header.size() &&
              (n == 0 || std::fwrite(data, 1, n, f) == n);
    ok = (std::fclose(f) == 0) && ok;
    if (!ok) fail(path + ": write failed");
  }
  void commit() {
    for (const auto& f : files_)
      if (std::rename(f.first.c_str(), f.second.c_str()) != 0)
        fail(f.second + ": cannot write (" + std::strerror(errno) + ")");
    files_.clear();
  }

 private:
  std::vector<std::pair<std::string, std::string>> files_;  // (temporary, final)
};

void write_file(const std::string& path, const std::string& header, const uint8_t* data, size_t n) {
  StagedFiles out;
  out.write(path, header, data, n);
  out.commit();
}

// ---------------------------------------------------------------- SHA-256

class Sha256 {
 public:
  void update(const uint8_t* p, size_t n) {
    for (size_t i = 0; i < n; ++i) {
      buf_[fill_++] = p[i];
      if (fill_ == 64) {
        block(buf_);
        fill_ = 0;
      }
    }
    bits_ += 8ull * n;
  }
  std::string hex() {
    uint64_t bits = bits_;
    uint8_t pad = 0x80;
    update(&pad, 1);
    uint8_t zero = 0;
    while (fill_ != 56) update(&zero, 1);
    uint8_t len[8];
    for (int i = 0; i < 8; ++i) len[i] = uint8_t(bits >> (56 - 8 * i));
    update(len, 8);
    static const char* digits = "0123456789abcdef";
    std::string out;
    for (uint32_t w : h_)
      for (int s = 28; s >= 0; s -= 4) out += digits[(w >> s) & 15];
    return out;
  }

 private:
  static uint32_t rotr(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }
  void block(const uint8_t* p) {
    static const uint32_t k[64] = {
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
        0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
        0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
        0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
        0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
        0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
        0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};
    uint32_t w[64];
    for (int i = 0; i < 16; ++i)
      w[i] = uint32_t(p[4 * i]) << 24 | uint32_t(p[4 * i + 1]) << 16 | uint32_t(p[4 * i + 2]) << 8 | p[4 * i + 3];
    for (int i = 16; i < 64; ++i) {
      uint32_t s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
      uint32_t s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
      w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = h_[0], b = h_[1], c = h_[2], d = h_[3], e = h_[4], f = h_[5], g = h_[6], h = h_[7];
    for (int i = 0; i < 64; ++i) {
      uint32_t t1 = h + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + k[i] + w[i];
      uint32_t t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
      h = g, g = f, f = e, e = d + t1, d = c, c = b, b = a, a = t1 + t2;
    }
    h_[0] += a, h_[1] += b, h_[2] += c, h_[3] += d, h_[4] += e, h_[5] += f, h_[6] += g, h_[7] += h;
  }
  uint32_t h_[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
  uint8_t buf_[64];
  size_t fill_ = 0;
  uint64_t bits_ = 0;
};

std::string sha256_hex(const std::vector<uint8_t>& data) {
  Sha256 h;
  h.update(data.data(), data.size());
  return h.hex();
}

// ---------------------------------------------------------------- a small JSON reader

struct Json {
  enum Kind { Null, Bool, Number, String, Array, Object } kind = Null;
  bool b = false;
  double num = 0;
  std::string str;
  std::vector<Json> items;
  std::vector<std::pair<std::string, Json>> fields;

  const Json* get(const std::string& key) const {
    for (const auto& kv : fields)
      if (kv.first == key) return &kv.second;
    return nullptr;
  }
};

class JsonParser {
 public:
  JsonParser(const std::string& text, std::string where) : s_(text), where_(std::move(where)) {}
  Json parse() {
    Json v = value(0);
    ws();
    if (i_ != s_.size()) error("trailing characters");
    return v;
  }

 private:
  [[noreturn]] void error(const std::string& what) const {
    fail(where_ + ": not valid JSON (" + what + " at offset " + std::to_string(i_) + ")");
  }
  void ws() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\n' || s_[i_] == '\r')) ++i_;
  }
  bool eat(const char* lit) {
    size_t n = std::strlen(lit);
    if (s_.compare(i_, n, lit) != 0) return false;
    i_ += n;
    return true;
  }
  Json value(int depth) {
    if (depth > 64) error("nested too deeply");
    ws();
    if (i_ >= s_.size()) error("unexpected end");
    Json v;
    char c = s_[i_];
    if (c == '{') {
      v.kind = Json::Object;
      ++i_;
      ws();
      if (i_ < s_.size() && s_[i_] == '}') return ++i_, v;
      for (;;) {
        ws();
        if (i_ >= s_.size() || s_[i_] != '"') error("expected a key");
        std::string key = string();
        ws();
        if (i_ >= s_.size() || s_[i_] != ':') error("expected ':'");
        ++i_;
        v.fields.emplace_back(std::move(key), value(depth + 1));
        ws();
        if (i_ < s_.size() && s_[i_] == ',') { ++i_; continue; }
        if (i_ < s_.size() && s_[i_] == '}') { ++i_; return v; }
        error("expected ',' or '}'");
      }
    }
    if (c == '[') {
      v.kind = Json::Array;
      ++i_;
      ws();
      if (i_ < s_.size() && s_[i_] == ']') return ++i_, v;
      for (;;) {
        v.items.push_back(value(depth + 1));
        ws();
        if (i_ < s_.size() && s_[i_] == ',') { ++i_; continue; }
        if (i_ < s_.size() && s_[i_] == ']') { ++i_; return v; }
        error("expected ',' or ']'");
      }
    }
    if (c == '"') {
      v.kind = Json::String;
      v.str = string();
      return v;
    }
    if (eat("true")) { v.kind = Json::Bool; v.b = true; return v; }
    if (eat("false")) { v.kind = Json::Bool; return v; }
    if (eat("null")) return v;
    // number: validate the JSON grammar, then convert with strtod (C locale).
    size_t start = i_;
    if (s_[i_] == '-') ++i_;
    auto digits = [&] {
      size_t n = 0;
      while (i_ < s_.size() && s_[i_] >= '0' && s_[i_] <= '9') ++i_, ++n;
      return n;
    };
    if (digits() == 0) error("unexpected character");
    if (i_ < s_.size() && s_[i_] == '.') { ++i_; if (digits() == 0) error("bad number"); }
    if (i_ < s_.size() && (s_[i_] == 'e' || s_[i_] == 'E')) {
      ++i_;
      if (i_ < s_.size() && (s_[i_] == '+' || s_[i_] == '-')) ++i_;
      if (digits() == 0) error("bad number");
    }
    v.kind = Json::Number;
    v.num = std::strtod(s_.substr(start, i_ - start).c_str(), nullptr);
    return v;
  }
  std::string string() {
    ++i_;  // opening quote
    std::string out;
    while (i_ < s_.size() && s_[i_] != '"') {
      char c = s_[i_++];
      if (static_cast<unsigned char>(c) < 0x20) error("control character in string");
      if (c != '\\') { out += c; continue; }
      if (i_ >= s_.size()) break;
      char e = s_[i_++];
      switch (e) {
        case '"': case '\\': case '/': out += e; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          if (i_ + 4 > s_.size()) error("bad \\u escape");
          unsigned cp = 0;
          for (int k = 0; k < 4; ++k) {
            char h = s_[i_++];
            cp <<= 4;
            if (h >= '0' && h <= '9') cp |= h - '0';
            else if (h >= 'a' && h <= 'f') cp |= h - 'a' + 10;
            else if (h >= 'A' && h <= 'F') cp |= h - 'A' + 10;
            else error("bad \\u escape");
          }
          // UTF-8 (surrogate pairs are kept as two 3-byte sequences: no field we read has them)
          if (cp < 0x80) out += char(cp);
          else if (cp < 0x800) out += char(0xC0 | cp >> 6), out += char(0x80 | (cp & 63));
          else out += char(0xE0 | cp >> 12), out += char(0x80 | ((cp >> 6) & 63)), out += char(0x80 | (cp & 63));
          break;
        }
        default: error("bad escape");
      }
    }
    if (i_ >= s_.size()) error("unterminated string");
    ++i_;  // closing quote
    return out;
  }

  const std::string& s_;
  std::string where_;
  size_t i_ = 0;
};

// ---------------------------------------------------------------- meta.json

// One input size of the library and its labels function (meta.json's "entries").
struct Entry {
  int64_t height = 0, width = 0;
  std::string main;
};

struct Meta {
  int64_t height = 0, width = 0;  // the default entry's
  std::vector<Entry> entries;     // the default first; one for a library of one size
  float mean[3], stdev[3];
  int64_t num_classes = 0;
  std::string so_sha256, arch, tvm, tvm_ffi;
};

Meta read_meta(const std::string& dir) {
  const std::string path = dir + "/meta.json";
  std::ifstream probe(path);
  if (!probe) fail(dir + ": no meta.json (not an artifact directory)");
  auto bytes = read_file(path, "meta.json");
  std::string text(bytes.begin(), bytes.end());
  Json root = JsonParser(text, path).parse();
  if (root.kind != Json::Object) fail(path + ": not a JSON object");
  auto need = [&](const char* key, Json::Kind kind, const char* what) -> const Json& {
    const Json* v = root.get(key);
    if (!v || v->kind != kind) fail(path + ": '" + key + "' missing or not " + what);
    return *v;
  };
  auto integer = [&](const Json& v, const char* key) -> int64_t {
    if (v.kind != Json::Number || v.num != std::floor(v.num) || v.num < 1 || v.num > 1e9)
      fail(path + ": '" + key + "' must hold positive integers");
    return static_cast<int64_t>(v.num);
  };
  if (need("format", Json::String, "a string").str != "ppmseg-artifact/1")
    fail(path + ": not a ppmseg-artifact/1 file");
  Meta m;
  const Json& shape = need("input_shape", Json::Array, "an array");
  if (shape.items.size() != 4) fail(path + ": 'input_shape' must be [1, 3, H, W]");
  int64_t dims[4];
  for (int i = 0; i < 4; ++i) dims[i] = integer(shape.items[i], "input_shape");
  if (dims[0] != 1 || dims[1] != 3) fail(path + ": 'input_shape' must be [1, 3, H, W]");
  if (const Json* layout = root.get("input_layout"); layout && layout->kind == Json::String && layout->str != "NCHW")
    fail(path + ": input layout " + layout->str + " is not supported (NCHW only)");
  m.height = dims[2];
  m.width = dims[3];
  m.entries.push_back(Entry{m.height, m.width, "main"});
  if (const Json* listed = root.get("entries"); listed && listed->kind != Json::Null) {
    // pipeline/compile/artifact.py::entry_functions; the first is the default shape's "main".
    if (listed->kind != Json::Array || listed->items.empty())
      fail(path + ": 'entries' must be a non-empty array");
    m.entries.clear();
    for (const Json& e : listed->items) {
      const Json* s = e.kind == Json::Object ? e.get("input_shape") : nullptr;
      const Json* f = e.kind == Json::Object ? e.get("main") : nullptr;
      if (!s || s->kind != Json::Array || s->items.size() != 4 || !f || f->kind != Json::String)
        fail(path + ": each of 'entries' needs an input_shape [1, 3, H, W] and a main function");
      m.entries.push_back(Entry{integer(s->items[2], "entries"), integer(s->items[3], "entries"), f->str});
    }
    if (m.entries[0].height != m.height || m.entries[0].width != m.width)
      fail(path + ": the first of 'entries' must be input_shape");
  }
  for (const char* key : {"mean", "std"}) {
    const Json& arr = need(key, Json::Array, "an array");
    if (arr.items.size() != 3) fail(path + ": '" + key + "' must hold 3 numbers (RGB)");
    for (int c = 0; c < 3; ++c) {
      if (arr.items[c].kind != Json::Number) fail(path + ": '" + key + "' must hold 3 numbers (RGB)");
      float v = static_cast<float>(arr.items[c].num);  // as torch.tensor(mean): float32
      (key[0] == 'm' ? m.mean : m.stdev)[c] = v;
    }
  }
  for (int c = 0; c < 3; ++c)
    if (!std::isfinite(m.mean[c]) || !std::isfinite(m.stdev[c]) || m.stdev[c] == 0.0f)
      fail(path + ": 'mean' and 'std' must be finite and 'std' non-zero");
  m.num_classes = integer(need("num_classes", Json::Number, "a number"), "num_classes");
  if (m.num_classes > 65536) fail(path + ": 'num_classes' above 65536 is not supported");
  m.so_sha256 = need("so_sha256", Json::String, "a string").str;
  m.arch = need("arch", Json::String, "a string").str;
  if (const Json* v = root.get("tvm"); v && v->kind == Json::String) m.tvm = v->str;
  if (const Json* v = root.get("tvm_ffi"); v && v->kind == Json::String) m.tvm_ffi = v->str;
  return m;
}

const char* machine_name(uint16_t m) {
  switch (m) {
    case 0x3E: return "x86_64";
    case 0xB7: return "aarch64";
    case 0x28: return "arm";
    case 0x03: return "x86";
    case 0xF3: return "riscv";
    default: return nullptr;
  }
}

template <typename T>
T load_le(const std::vector<uint8_t>& b, size_t off) {
  T v = 0;
  for (size_t i = 0; i < sizeof(T); ++i) v |= T(b[off + i]) << (8 * i);
  return v;
}

// dlopen maps segments without checking the file is long enough (a truncated library
// dies of SIGBUS): check that the ELF64 header tables and loadable segments lie inside.
void check_elf_layout(const std::string& so, const std::vector<uint8_t>& b) {
  const uint64_t size = b.size();
  if (size < 64 || b[4] != 2) fail(so + ": not a 64-bit ELF library");
  if (load_le<uint16_t>(b, 16) != 3) fail(so + ": not an ELF shared library (e_type is not ET_DYN)");
  const uint64_t phoff = load_le<uint64_t>(b, 32), shoff = load_le<uint64_t>(b, 40);
  const uint64_t phentsize = load_le<uint16_t>(b, 54), phnum = load_le<uint16_t>(b, 56);
  const uint64_t shentsize = load_le<uint16_t>(b, 58), shnum = load_le<uint16_t>(b, 60);
  auto inside = [&](uint64_t off, uint64_t len) { return off <= size && len <= size - off; };
  if (phentsize < 56 || !inside(phoff, phentsize * phnum) || (shnum && !inside(shoff, shentsize * shnum)))
    fail(so + ": truncated or corrupt ELF library");
  for (uint64_t i = 0; i < phnum; ++i) {
    const size_t ph = size_t(phoff + i * phentsize);
    if (load_le<uint32_t>(b, ph) == 1 /* PT_LOAD */ &&
        !inside(load_le<uint64_t>(b, ph + 8), load_le<uint64_t>(b, ph + 32)))
      fail(so + ": truncated or corrupt ELF library");
  }
}

// Checks the library against meta.json and this runner before anything is dlopen'ed.
void verify_library(const std::string& so, const Meta& meta) {
  std::ifstream probe(so);
  if (!probe) fail(so + ": model.so is missing");
  auto bytes = read_file(so, "model.so");
  if (sha256_hex(bytes) != meta.so_sha256)
    fail(so + ": SHA-256 does not match meta.json (modified or from another build)");
  if (bytes.size() < 20 || std::memcmp(bytes.data(), "\x7f" "ELF", 4) != 0)
    fail(so + ": not an ELF shared library");
  if (bytes[5] != 1) fail(so + ": big-endian ELF is not supported");
  uint16_t machine = uint16_t(bytes[18] | bytes[19] << 8);
  check_elf_layout(so, bytes);
  const char* name = machine_name(machine);
  std::string arch = name ? name : "unknown (e_machine " + std::to_string(machine) + ")";
  if (machine != kHostMachine)
    fail(so + ": built for " + arch + ", this machine is " + kHostArch + " (run it on the device)");
  if (meta.arch != arch) fail(so + ": library is " + arch + ", meta.json says arch " + meta.arch);
  const std::string ours_tvm = PPMSEG_TVM_VERSION, ours_ffi = PPMSEG_TVM_FFI_VERSION;
  if (!ours_tvm.empty() && !meta.tvm.empty() && meta.tvm != ours_tvm)
    fail(so + ": built with tvm " + meta.tvm + ", this runner is linked against " + ours_tvm);
  if (!ours_ffi.empty() && !meta.tvm_ffi.empty() && meta.tvm_ffi != ours_ffi)
    fail(so + ": built with tvm_ffi " + meta.tvm_ffi + ", this runner is linked against " + ours_ffi);
}

// ---------------------------------------------------------------- images

struct Image {
  int64_t height = 0, width = 0;
  std::vector<uint8_t> rgb;  // HWC
};

Image read_ppm(const std::string& path) {
  std::vector<uint8_t> d = read_file(path, "input image");
  if (d.size() >= 2 && d[0] == 'P' && (d[1] == '3' || d[1] == '1' || d[1] == '2'))
    fail(path + ": ASCII PNM (P" + std::string(1, char(d[1])) + ") is not supported; use a binary P6 PPM");
  if (d.size() >= 2 && d[0] == 'P' && (d[1] == '4' || d[1] == '5'))
    fail(path + ": a " + (d[1] == '5' ? "greyscale PGM (P5)" : "bitmap PBM (P4)") + ", not a colour P6 PPM");
  if (d.size() < 2 || d[0] != 'P' || d[1] != '6') fail(path + ": not a binary PPM (no P6 header)");
  size_t i = 2;
  auto space = [](uint8_t c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; };
  auto number = [&](const char* what) -> int64_t {
    // whitespace and '#' comments before each header field
    for (;;) {
      while (i < d.size() && space(d[i])) ++i;
      if (i < d.size() && d[i] == '#') {
        while (i < d.size() && d[i] != '\n' && d[i] != '\r') ++i;
        continue;
      }
      break;
    }
    if (i >= d.size()) fail(path + ": truncated PPM header");
    if (d[i] < '0' || d[i] > '9') fail(path + ": malformed PPM header (bad " + std::string(what) + ")");
    int64_t v = 0;
    while (i < d.size() && d[i] >= '0' && d[i] <= '9') {
      v = v * 10 + (d[i++] - '0');
      if (v > 1000000) fail(path + ": PPM " + what + " is too large");
    }
    if (i < d.size() && !space(d[i]) && d[i] != '#')
      fail(path + ": malformed PPM header (bad " + std::string(what) + ")");
    return v;
  };
  Image img;
  img.width = number("width");
  img.height = number("height");
  int64_t maxval = number("maxval");
  if (img.width < 1 || img.height < 1) fail(path + ": PPM has zero width or height");
  if (maxval != 255) fail(path + ": PPM maxval " + std::to_string(maxval) + " is not supported (8-bit, maxval 255)");
  if (i >= d.size() || !space(d[i])) fail(path + ": truncated PPM header");
  ++i;  // exactly one whitespace byte before the raster
  if (img.width * img.height > (int64_t(1) << 28)) fail(path + ": PPM image is too large");
  size_t need = size_t(img.width * img.height * 3);
  if (d.size() - i < need)
    fail(path + ": truncated PPM (" + std::to_string(d.size() - i) + " of " + std::to_string(need) +
         " pixel bytes)");
  img.rgb.assign(d.begin() + i, d.begin() + i + need);
  return img;
}

// Source indices and weights for one axis, as PyTorch computes them for
// F.interpolate(mode="bilinear", align_corners=False) on float32.
struct Axis {
  std::vector<int64_t> i0, i1;
  std::vector<float> l0, l1;
};

Axis linear_axis(int64_t in, int64_t out) {
  Axis a;
  a.i0.resize(out), a.i1.resize(out), a.l0.resize(out), a.l1.resize(out);
  const float scale = static_cast<float>(in) / static_cast<float>(out);
  for (int64_t d = 0; d < out; ++d) {
    if (in == out) {
      a.i0[d] = a.i1[d] = d, a.l0[d] = 1.0f, a.l1[d] = 0.0f;
      continue;
    }
    float src = (static_cast<float>(d) + 0.5f) * scale - 0.5f;
    if (src < 0.0f) src = 0.0f;
    int64_t i0 = std::min(static_cast<int64_t>(std::floor(src)), in - 1);
    float l1 = std::min(std::max(src - static_cast<float>(i0), 0.0f), 1.0f);
    a.i0[d] = i0;
    a.i1[d] = i0 + (i0 < in - 1 ? 1 : 0);
    a.l1[d] = l1;
    a.l0[d] = 1.0f - l1;
  }
  return a;
}

// uint8 HWC image -> float32 NCHW, normalized, resized to h x w in the top-left corner of
// a [1, 3, rows, stride] tensor (the rest is left as it is: zero padding).
void normalize(const Image& img, const Meta& m, int64_t h, int64_t w, int64_t rows, int64_t stride, float* out) {
  const int64_t H = img.height, W = img.width;
  const uint8_t* px = img.rgb.data();
  auto at = [&](int64_t y, int64_t x, int c) { return static_cast<float>(px[(y * W + x) * 3 + c]); };
  if (H == h && W == w) {  // same size: no resize (model/image.py skips it too)
    for (int c = 0; c < 3; ++c)
      for (int64_t y = 0; y < h; ++y)
        for (int64_t x = 0; x < w; ++x) {
          float v = at(y, x, c) / 255.0f;
          out[(c * rows + y) * stride + x] = (v - m.mean[c]) / m.stdev[c];
        }
    return;
  }
  const Axis ay = linear_axis(H, h), ax = linear_axis(W, w);
  for (int c = 0; c < 3; ++c)
    for (int64_t y = 0; y < h; ++y) {
      const int64_t y0 = ay.i0[y], y1 = ay.i1[y];
      const float hl0 = ay.l0[y], hl1 = ay.l1[y];
      float* row = out + (c * rows + y) * stride;
      for (int64_t x = 0; x < w; ++x) {
        const int64_t x0 = ax.i0[x], x1 = ax.i1[x];
        const float wl0 = ax.l0[x], wl1 = ax.l1[x];
        // Columns blended within the two rows first, then the rows (model/image.py).
        const float t0 = at(y0, x0, c) * wl0 + at(y0, x1, c) * wl1;
        const float t1 = at(y1, x0, c) * wl0 + at(y1, x1, c) * wl1;
        const float v = (t0 * hl0 + t1 * hl1) / 255.0f;
        row[x] = (v - m.mean[c]) / m.stdev[c];
      }
    }
}

// Where an image goes (pipeline/common/shapes.py): with one entry, resized to it; with
// several, the entry nearest its aspect ratio (log scale, the first of equals), resized
// keeping the ratio as PaddleSeg's eval resize does (sides rounded up to a multiple of 32,
// never past the entry), the rest of the entry zero.
struct Placement {
  size_t entry = 0;
  int64_t height = 0, width = 0;
};

Placement place(const Image& img, const Meta& m) {
  if (m.entries.size() == 1) return Placement{0, m.height, m.width};
  const double ratio = std::log(double(img.width) / double(img.height));
  Placement p;
  double best = INFINITY;
  for (size_t i = 0; i < m.entries.size(); ++i) {
    const double d = std::fabs(std::log(double(m.entries[i].width) / double(m.entries[i].height)) - ratio);
    if (d < best) best = d, p.entry = i;
  }
  const Entry& e = m.entries[p.entry];
  const double scale = std::min(double(e.height) / double(img.height), double(e.width) / double(img.width));
  auto side = [&](int64_t s, int64_t bound) {  // Python's round() rounds half to even, as nearbyint does
    const int64_t r = static_cast<int64_t>(std::nearbyint(double(s) * scale));
    return std::min(bound, std::max<int64_t>(32, (r + 31) / 32 * 32));
  };
  p.height = side(img.height, e.height), p.width = side(img.width, e.width);
  return p;
}

// PyTorch's "nearest": src = min(floor(dst * (float(in) / out)), in - 1).
std::vector<int64_t> nearest_axis(int64_t in, int64_t out) {
  std::vector<int64_t> idx(out);
  const float scale = static_cast<float>(in) / static_cast<float>(out);
  for (int64_t d = 0; d < out; ++d) {
    if (in == out) idx[d] = d;
    else if (out == 2 * in) idx[d] = d >> 1;
    else idx[d] = std::min(static_cast<int64_t>(std::floor(static_cast<float>(d) * scale)), in - 1);
  }
  return idx;
}

struct Labels {
  int64_t height = 0, width = 0;
  std::vector<int32_t> ids;
};

Labels resize_labels(const Labels& in, int64_t H, int64_t W) {
  if (in.height == H && in.width == W) return in;
  Labels out{H, W, std::vector<int32_t>(size_t(H * W))};
  auto iy = nearest_axis(in.height, H), ix = nearest_axis(in.width, W);
  for (int64_t y = 0; y < H; ++y)
    for (int64_t x = 0; x < W; ++x) out.ids[y * W + x] = in.ids[iy[y] * in.width + ix[x]];
  return out;
}

void write_pgm(StagedFiles& out, const std::string& path, const Labels& l, int64_t num_classes) {
  const bool wide = num_classes > 256;
  std::vector<uint8_t> data(size_t(l.height * l.width) * (wide ? 2 : 1));
  for (size_t i = 0; i < l.ids.size(); ++i) {
    uint32_t v = static_cast<uint32_t>(l.ids[i]);
    if (wide) data[2 * i] = uint8_t(v >> 8), data[2 * i + 1] = uint8_t(v);
    else data[i] = uint8_t(v);
  }
  std::string header = "P5\n" + std::to_string(l.width) + " " + std::to_string(l.height) + "\n" +
                       (wide ? "65535" : "255") + "\n";
  out.write(path, header, data.data(), data.size());
}

// model/image.py::palette: PASCAL VOC bit-interleaved colours of id + 1.
void write_color(StagedFiles& out, const std::string& path, const Labels& l) {
  std::vector<uint8_t> data(size_t(l.height * l.width) * 3);
  for (size_t i = 0; i < l.ids.size(); ++i) {
    uint32_t id = static_cast<uint32_t>(l.ids[i]) + 1;
    uint8_t rgb[3] = {0, 0, 0};
    for (int shift = 0; shift < 8; ++shift)
      for (int c = 0; c < 3; ++c) rgb[c] |= uint8_t(((id >> (3 * shift + c)) & 1) << (7 - shift));
    std::memcpy(&data[3 * i], rgb, 3);
  }
  std::string header = "P6\n" + std::to_string(l.width) + " " + std::to_string(l.height) + "\n255\n";
  out.write(path, header, data.data(), data.size());
}

// The label map as a PGM and/or a colour PPM (an empty path: not asked for), both or neither.
void write_labels(const std::string& pgm, const std::string& color, const Labels& l, int64_t num_classes) {
  StagedFiles out;
  if (!pgm.empty()) write_pgm(out, pgm, l, num_classes);
  if (!color.empty()) write_color(out, color, l);
  out.commit();
}

// ---------------------------------------------------------------- TVM

struct AlignedAlloc {
  void AllocData(DLTensor* t) {
    size_t n = (t->dtype.bits * t->dtype.lanes + 7) / 8;
    for (int i = 0; i < t->ndim; ++i) n *= size_t(t->shape[i]);
    n = (n + 63) / 64 * 64;
    t->data = std::aligned_alloc(64, n ? n : 64);
    if (!t->data) throw std::bad_alloc();
  }
  void FreeData(DLTensor* t) { std::free(t->data); }
};

struct Model {
  ffi::Module lib, vm;
  std::vector<ffi::Function> mains;  // one per meta.json entry
};

Model load_model(const std::string& so, const Meta& meta) {
  ffi::Module lib = ffi::Module::LoadFromFile(so);
  auto load = lib->GetFunction("vm_load_executable");
  if (!load.has_value()) fail(so + ": not a Relax VM executable (no vm_load_executable)");
  ffi::Module vm = (*load)().cast<ffi::Module>();
  auto init = vm->GetFunction("vm_initialization");
  if (!init.has_value()) fail(so + ": the VM has no vm_initialization");
  constexpr int kPooled = 2;  // memory::AllocatorType::kPooled
  (*init)(static_cast<int>(kDLCPU), 0, kPooled, static_cast<int>(kDLCPU), 0, kPooled);
  Model model{lib, vm, {}};
  for (const Entry& e : meta.entries) {
    auto main = vm->GetFunction(e.main);
    if (!main.has_value()) fail(so + ": the executable has no '" + e.main + "' function");
    model.mains.push_back(*main);
  }
  return model;
}

Labels run_main(const ffi::Function& main, const ffi::Tensor& x, const Meta& meta) {
  ffi::Any out = main(x);
  auto t = out.try_cast<ffi::Tensor>();
  if (!t.has_value()) fail("model.so: 'main' did not return a tensor");
  const DLTensor* d = t->GetDLTensorPtr();
  if (d->device.device_type != kDLCPU || d->dtype.code != kDLInt || d->dtype.bits != 32 || d->dtype.lanes != 1 ||
      d->ndim != 3 || d->shape[0] != 1 || !t->IsContiguous())
    fail("model.so: 'main' must return a contiguous int32 [1, H, W] CPU tensor");
  Labels l{d->shape[1], d->shape[2], {}};
  const int32_t* p = reinterpret_cast<const int32_t*>(static_cast<const char*>(d->data) + d->byte_offset);
  l.ids.assign(p, p + l.height * l.width);
  for (int32_t v : l.ids)
    if (v < 0 || v >= meta.num_classes)
      fail("model.so: label " + std::to_string(v) + " outside [0, " + std::to_string(meta.num_classes) + ")");
  return l;
}

// Entry ``entry``'s label map at its size, as meta.json promises it.
Labels labels_of(const Model& m, size_t entry, const ffi::Tensor& x, const Meta& meta, const std::string& so) {
  const Entry& e = meta.entries[entry];
  Labels labels = run_main(m.mains[entry], x, meta);
  if (labels.height != e.height || labels.width != e.width)
    fail(so + ": '" + e.main + "' returned " + std::to_string(labels.height) + "x" + std::to_string(labels.width) +
         " labels, meta.json says " + std::to_string(e.height) + "x" + std::to_string(e.width));
  return labels;
}

// An image's label map at the image's size: placed in its entry, run, the padding cropped,
// resized back by nearest neighbour. ``inputs`` holds one input tensor per entry, made on use.
Labels segment(const Model& model, const Image& img, const Meta& meta, const std::string& so,
               std::vector<std::optional<ffi::Tensor>>& inputs, Placement* where = nullptr) {
  const Placement p = place(img, meta);
  const Entry& e = meta.entries[p.entry];
  if (!inputs[p.entry].has_value()) {
    const int64_t shape[4] = {1, 3, e.height, e.width};
    inputs[p.entry] = ffi::Tensor::FromNDAlloc(AlignedAlloc(), ffi::ShapeView(shape, 4), DLDataType{kDLFloat, 32, 1},
                                               DLDevice{kDLCPU, 0});
  }
  float* xp = static_cast<float*>(inputs[p.entry]->data_ptr());
  std::fill(xp, xp + 3 * e.height * e.width, 0.0f);
  normalize(img, meta, p.height, p.width, e.height, e.width, xp);
  Labels labels = labels_of(model, p.entry, *inputs[p.entry], meta, so);
  if (p.height != e.height || p.width != e.width) {
    Labels cropped{p.height, p.width, std::vector<int32_t>(size_t(p.height * p.width))};
    for (int64_t y = 0; y < p.height; ++y)
      std::copy_n(&labels.ids[size_t(y * e.width)], p.width, &cropped.ids[size_t(y * p.width)]);
    labels = std::move(cropped);
  }
  if (where) *where = p;
  return resize_labels(labels, img.height, img.width);
}

int num_threads() {
  auto f = ffi::Function::GetGlobal("runtime.NumThreads");
  if (!f.has_value()) return -1;
  return (*f)().cast<int>();
}

// ---------------------------------------------------------------- command line

const char* kUsage =
    "usage: ppmseg-run ARTIFACT_DIR (--input IMAGE.ppm | --raw X.bin) [-o LABELS.pgm]\n"
    "                  [--color COLOR.ppm] [--bench N] [--warmup K] [--dump-input X.bin] [-v]\n"
    "       ppmseg-run ARTIFACT_DIR --input IMAGE.ppm|DIR [--input ...] [-o OUT_DIR] [--color OUT_DIR] [-v]\n"
    "\n"
    "Runs DIR/model.so (checked against DIR/meta.json) on one input.\n"
    "  --input IMAGE.ppm   binary PPM (P6, maxval 255), any size: resized and normalized as\n"
    "                      the Python runtime does (with several input sizes, into the one\n"
    "                      nearest its aspect ratio, padded); labels at the image size\n"
    "  --raw X.bin         normalized float32 NCHW tensor of the compiled (default) shape\n"
    "                      (native byte order, no header); labels at that size\n"
    "  -o LABELS.pgm       label map as PGM (P5): 8-bit ids, 16-bit big-endian above 256 classes\n"
    "  --color COLOR.ppm   label map coloured with the PaddleSeg palette (P6)\n"
    "  --bench N           time N runs of the entry's 'main' after K warm-up runs; print median, p90\n"
    "  --warmup K          warm-up runs before --bench (default 3)\n"
    "  --dump-input X.bin  write the normalized float32 input tensor (for checking)\n"
    "  -v, --verbose       print which input size each image ran in\n"
    "\n"
    "Many images (several --input, or a directory: its *.ppm files in name order, not\n"
    "recursive), with the library loaded once: -o OUT_DIR receives <stem>.pgm and\n"
    "--color OUT_DIR <stem>-color.ppm for each. A bad file is reported in one line and\n"
    "skipped; the exit code is 1 if any failed. Prints the images per second.\n"
    "Threads: TVM_NUM_THREADS (default: the runtime's choice).\n";

struct Args {
  std::string dir, raw, output, color, dump;
  std::vector<std::string> inputs;
  long bench = 0, warmup = 3;
  bool verbose = false;
};

long parse_count(const std::string& flag, const char* text, long lo) {
  char* end = nullptr;
  errno = 0;
  long v = std::strtol(text, &end, 10);
  if (errno || end == text || *end || v < lo || v > 1000000)
    throw Failure(flag + ": expected an integer >= " + std::to_string(lo) + ", got '" + text + "'", 2);
  return v;
}

bool is_directory(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

// Many images: several --input, or one that is a directory.
bool many_images(const Args& a) { return a.inputs.size() > 1 || (a.inputs.size() == 1 && is_directory(a.inputs[0])); }

bool ends_with_ci(const std::string& s, const std::string& suffix) {
  if (s.size() < suffix.size()) return false;
  for (size_t i = 0; i < suffix.size(); ++i)
    if (std::tolower(static_cast<unsigned char>(s[s.size() - suffix.size() + i])) != suffix[i]) return false;
  return true;
}

// Usage errors of the many-image form: outputs are directories, and nothing is per run.
void check_many_args(const Args& a) {
  if (!a.raw.empty() || a.bench > 0 || !a.dump.empty())
    throw Failure("--raw, --bench and --dump-input take one --input file, not several images", 2);
  if (a.output.empty() && a.color.empty())
    throw Failure("nothing to do: give -o OUT_DIR and/or --color OUT_DIR", 2);
  for (const auto& [flag, path] : {std::pair{"-o", a.output}, std::pair{"--color", a.color}})
    if (ends_with_ci(path, ".pgm") || ends_with_ci(path, ".ppm"))
      throw Failure(std::string(flag) + " " + path + ": several images are written into a directory; give " + flag +
                    " OUT_DIR", 2);
}

Args parse_args(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "-h" || arg == "--help") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    }
    auto value = [&]() -> const char* {
      if (i + 1 >= argc) throw Failure(arg + ": missing value (see --help)", 2);
      return argv[++i];
    };
    if (arg == "--input" || arg == "-i") a.inputs.push_back(value());
    else if (arg == "--raw") a.raw = value();
    else if (arg == "-o" || arg == "--output") a.output = value();
    else if (arg == "--color") a.color = value();
    else if (arg == "--dump-input") a.dump = value();
    else if (arg == "--bench") a.bench = parse_count(arg, value(), 1);
    else if (arg == "--warmup") a.warmup = parse_count(arg, value(), 0);
    else if (arg == "-v" || arg == "--verbose") a.verbose = true;
    else if (!arg.empty() && arg[0] == '-') throw Failure("unknown option " + arg + " (see --help)", 2);
    else if (a.dir.empty()) a.dir = arg;
    else throw Failure("unexpected argument " + arg + " (one artifact directory; see --help)", 2);
  }
  if (a.dir.empty()) throw Failure("missing ARTIFACT_DIR (see --help)", 2);
  if (a.inputs.empty() == a.raw.empty()) throw Failure("give exactly one of --input IMAGE.ppm or --raw X.bin", 2);
  if (many_images(a)) check_many_args(a);
  else if (a.output.empty() && a.color.empty() && a.bench == 0 && a.dump.empty())
    throw Failure("nothing to do: give -o LABELS.pgm, --color COLOR.ppm or --bench N", 2);
  return a;
}

double percentile_nearest_rank(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  size_t rank = static_cast<size_t>(std::ceil(p * v.size()));
  return v[std::min(v.size(), std::max<size_t>(rank, 1)) - 1];
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// ---------------------------------------------------------------- many images

std::string base_name(const std::string& path) {
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

// Python's Path.stem: the name without its last suffix (a leading dot is not a suffix).
std::string stem(const std::string& path) {
  const std::string name = base_name(path);
  const size_t dot = name.rfind('.');
  return dot == std::string::npos || dot == 0 || dot + 1 == name.size() ? name : name.substr(0, dot);
}

std::string join(const std::string& dir, const std::string& name) {
  return dir.empty() || dir.back() == '/' ? dir + name : dir + "/" + name;
}

// The *.ppm files (any case) directly in dir, in name order; hidden files are skipped (other
// tools' leftovers, and our own temporary files should an output directory be this one).
std::vector<std::string> ppm_files_in(const std::string& dir) {
  DIR* d = opendir(dir.c_str());
  if (!d) fail(dir + ": cannot read the directory (" + std::strerror(errno) + ")");
  std::vector<std::string> names;
  while (const dirent* e = readdir(d)) {
    const std::string name = e->d_name;
    struct stat st;
    if (name[0] != '.' && ends_with_ci(name, ".ppm") && stat(join(dir, name).c_str(), &st) == 0 &&
        S_ISREG(st.st_mode))
      names.push_back(name);
  }
  closedir(d);
  if (names.empty()) fail(dir + ": no .ppm files in this directory (subdirectories are not searched)");
  std::sort(names.begin(), names.end());
  std::vector<std::string> paths;
  for (const auto& n : names) paths.push_back(join(dir, n));
  return paths;
}

// The images in the order given: files as they are, directories expanded. A missing path is
// refused at once: a mistyped name should not cost a whole run.
std::vector<std::string> collect_images(const std::vector<std::string>& inputs) {
  std::vector<std::string> images;
  for (const auto& path : inputs) {
    struct stat st;
    if (stat(path.c_str(), &st) != 0) fail(path + ": no such file or directory");
    if (S_ISDIR(st.st_mode)) {
      auto found = ppm_files_in(path);
      images.insert(images.end(), found.begin(), found.end());
    } else {
      images.push_back(path);
    }
  }
  return images;
}

struct Job {
  std::string image, pgm, color;  // an empty output: not asked for
};

// Where each image's results go. Refuses, before any work, two images that would write the
// same file (the same stem) and an output that is one of the inputs.
std::vector<Job> plan(const std::vector<std::string>& images, const Args& a) {
  std::map<std::pair<dev_t, ino_t>, std::string> inputs;
  for (const auto& image : images) {
    struct stat st;
    if (stat(image.c_str(), &st) != 0) continue;  // vanished: reported when read
    auto [it, fresh] = inputs.emplace(std::pair{st.st_dev, st.st_ino}, image);
    if (!fresh) fail(image + " is given twice" + (it->second == image ? "" : " (also as " + it->second + ")"));
  }
  std::vector<Job> jobs;
  std::map<std::string, std::string> writer;  // output -> the image writing it
  for (const auto& image : images) {
    const std::string s = stem(image);
    Job job{image, a.output.empty() ? "" : join(a.output, s + ".pgm"),
            a.color.empty() ? "" : join(a.color, s + "-color.ppm")};
    for (const std::string* out : {&job.pgm, &job.color}) {
      if (out->empty()) continue;
      auto [it, fresh] = writer.emplace(*out, image);
      if (!fresh)
        fail(it->second + " and " + image + " would both write " + *out + "; rename one, or run them separately");
      struct stat st;
      if (stat(out->c_str(), &st) == 0 && inputs.count({st.st_dev, st.st_ino}))
        fail(*out + " would overwrite the input " + inputs[{st.st_dev, st.st_ino}] + "; write into another directory");
    }
    jobs.push_back(job);
  }
  return jobs;
}

// mkdir -p
void make_dirs(const std::string& dir) {
  for (size_t end = dir.find('/', 1);; end = dir.find('/', end + 1)) {
    const std::string part = dir.substr(0, end);
    if (mkdir(part.c_str(), 0777) != 0 && errno != EEXIST)
      fail(dir + ": cannot create the directory (" + std::strerror(errno) + ")");
    if (end == std::string::npos) break;
  }
  if (!is_directory(dir)) fail(dir + ": exists and is not a directory");
}

void check_output_dir(const std::string& dir) {
  struct stat st;
  if (!dir.empty() && stat(dir.c_str(), &st) == 0 && !S_ISDIR(st.st_mode))
    fail(dir + ": exists and is not a directory");
}

// Runs step; a Failure (a bad file) is reported in one line and gives false.
template <typename Step>
bool attempt(Step step) {
  try {
    step();
    return true;
  } catch (const Failure& e) {
    std::fprintf(stderr, "ppmseg-run: error: %s\n", first_line(e.what()).c_str());
    return false;
  }
}

int run_many(const Args& a, const Meta& meta, const std::string& so) {
  check_output_dir(a.output);
  check_output_dir(a.color);
  const std::vector<Job> jobs = plan(collect_images(a.inputs), a);
  for (const std::string& dir : {a.output, a.color})
    if (!dir.empty()) make_dirs(dir);

  std::vector<std::optional<ffi::Tensor>> inputs(meta.entries.size());
  Model model = load_model(so, meta);
  using clock = std::chrono::steady_clock;
  const auto start = clock::now();
  size_t done = 0, failed = 0;
  for (const Job& job : jobs) {
    // A file that cannot be read or written is reported and skipped. A failure of the library
    // itself would be the same for every image: it is not caught here and ends the run.
    Image img;
    if (!attempt([&] { img = read_ppm(job.image); })) {
      ++failed;
      continue;
    }
    Placement p;
    const Labels labels = segment(model, img, meta, so, inputs, &p);
    if (a.verbose)
      std::printf("%s: %lldx%lld in the %lldx%lld entry\n", job.image.c_str(), (long long)img.height,
                  (long long)img.width, (long long)meta.entries[p.entry].height, (long long)meta.entries[p.entry].width);
    if (!attempt([&] { write_labels(job.pgm, job.color, labels, meta.num_classes); })) {
      ++failed;
      continue;
    }
    ++done;
  }
  const double seconds = std::chrono::duration<double>(clock::now() - start).count();
  const char* env = std::getenv("TVM_NUM_THREADS");
  std::printf("segmented %zu of %zu images in %.2f s: %.2f images/s (library loaded once; reading, preprocessing, "
              "inference and writing included); threads %d (TVM_NUM_THREADS=%s)\n",
              done, jobs.size(), seconds, seconds > 0 ? double(done) / seconds : 0.0, num_threads(),
              env ? env : "unset");
  if (failed > 0) fail(std::to_string(failed) + " of " + std::to_string(jobs.size()) + " images failed (listed above)");
  return 0;
}

// ---------------------------------------------------------------- one input

int run_one(const Args& a, const Meta& meta, const std::string& so) {
  // Input first: a bad input fails fast, before the library is loaded.
  // An image runs in its entry (``place``); a raw tensor has the default entry's shape.
  std::optional<Image> img;
  Placement p{0, meta.height, meta.width};
  if (a.raw.empty()) img = read_ppm(a.inputs[0]), p = place(*img, meta);
  const Entry& e = meta.entries[p.entry];
  const int64_t shape[4] = {1, 3, e.height, e.width};
  const size_t numel = size_t(3 * e.height * e.width);
  ffi::Tensor x = ffi::Tensor::FromNDAlloc(AlignedAlloc(), ffi::ShapeView(shape, 4),
                                           DLDataType{kDLFloat, 32, 1}, DLDevice{kDLCPU, 0});
  float* xp = static_cast<float*>(x.data_ptr());
  if (img) {
    std::fill(xp, xp + numel, 0.0f);
    normalize(*img, meta, p.height, p.width, e.height, e.width, xp);
  } else {
    std::vector<uint8_t> raw = read_file(a.raw, "raw tensor");
    if (raw.size() != numel * sizeof(float))
      fail(a.raw + ": " + std::to_string(raw.size()) + " bytes, expected " + std::to_string(numel * sizeof(float)) +
           " (float32 [1, 3, " + std::to_string(shape[2]) + ", " + std::to_string(shape[3]) + "])");
    std::memcpy(xp, raw.data(), raw.size());
    for (size_t i = 0; i < numel; ++i)
      if (!std::isfinite(xp[i])) fail(a.raw + ": input contains NaN or infinite values");
  }
  if (!a.dump.empty()) write_file(a.dump, "", reinterpret_cast<const uint8_t*>(xp), numel * sizeof(float));
  if (a.output.empty() && a.color.empty() && a.bench == 0) return 0;

  Model model = load_model(so, meta);
  std::vector<std::optional<ffi::Tensor>> inputs(meta.entries.size());
  inputs[p.entry] = x;
  const Labels labels = img ? segment(model, *img, meta, so, inputs) : labels_of(model, 0, x, meta, so);
  if (a.verbose && img)
    std::printf("%s: %lldx%lld in the %lldx%lld entry\n", a.inputs[0].c_str(), (long long)img->height,
                (long long)img->width, (long long)e.height, (long long)e.width);
  write_labels(a.output, a.color, labels, meta.num_classes);

  if (a.bench > 0) {
    using clock = std::chrono::steady_clock;
    const ffi::Function& main = model.mains[p.entry];
    for (long i = 0; i < a.warmup; ++i) main(x);
    std::vector<double> ms;
    for (long i = 0; i < a.bench; ++i) {
      auto t0 = clock::now();
      ffi::Any out = main(x);
      ms.push_back(std::chrono::duration<double, std::milli>(clock::now() - t0).count());
    }
    const char* env = std::getenv("TVM_NUM_THREADS");
    std::printf("%s: median %.2f ms, p90 %.2f ms over %ld runs (%ld warm-up); threads %d (TVM_NUM_THREADS=%s)\n",
                e.main.c_str(), median(ms), percentile_nearest_rank(ms, 0.9), a.bench, a.warmup, num_threads(),
                env ? env : "unset");
  }
  return 0;
}

int run(int argc, char** argv) {
  Args a = parse_args(argc, argv);
  Meta meta = read_meta(a.dir);
  const std::string so = a.dir + "/model.so";
  verify_library(so, meta);
  return many_images(a) ? run_many(a, meta, so) : run_one(a, meta, so);
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const Failure& e) {
    std::fprintf(stderr, "ppmseg-run: error: %s\n", first_line(e.what()).c_str());
    return e.code;
  } catch (const ffi::Error& e) {
    std::fprintf(stderr, "ppmseg-run: error: %s: %s\n", e.kind().c_str(), first_line(e.message()).c_str());
    return 1;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "ppmseg-run: error: out of memory\n");
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ppmseg-run: error: %s\n", first_line(e.what()).c_str());
    return 1;
  }
}
