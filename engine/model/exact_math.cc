#include "engine/model/exact_math.h"

#include <array>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numbers>

namespace lizard {

namespace {

// 2^(j/64) for j < 64, rounded from a long double Taylor series at compile time.
constexpr int kExpTableBits = 6;
constexpr auto kExp2Table = [] {
  std::array<double, 1 << kExpTableBits> t{};
  for (int j = 0; j < (1 << kExpTableBits); ++j) {
    const long double y = j * 0.693147180559945309417232121458176568L / (1 << kExpTableBits);
    long double term = 1.0L, sum = 1.0L;
    for (int n = 1; n < 30; ++n) {
      term *= y / n;
      sum += term;
    }
    t[j] = static_cast<double>(sum);
  }
  return t;
}();

// (-1)^n / (2n + 1)! and (-1)^n / (2n)! for n <= 9: Taylor coefficients of sin and cos.
constexpr auto kSinCoefficients = [] {
  std::array<double, 10> c{};
  double factorial = 1.0;
  for (int n = 0; n < 10; ++n) {
    if (n > 0) factorial *= (2.0 * n) * (2.0 * n + 1);
    c[n] = (n % 2 == 0 ? 1.0 : -1.0) / factorial;
  }
  return c;
}();
constexpr auto kCosCoefficients = [] {
  std::array<double, 10> c{};
  double factorial = 1.0;
  for (int n = 0; n < 10; ++n) {
    if (n > 0) factorial *= (2.0 * n - 1) * (2.0 * n);
    c[n] = (n % 2 == 0 ? 1.0 : -1.0) / factorial;
  }
  return c;
}();

// ln 2 in two parts, the first with its low 21 bits zero: k * kLn2Hi is exact for |k| < 2^21.
constexpr double kLn2Hi = 6.93147180369123816490e-01;
constexpr double kLn2Lo = 1.90821492927058770002e-10;

// Rounds to the nearest integer (ties to even) with two additions, for |x| < 2^51.
double RoundToInteger(double x) {
  constexpr double kShifter = 0x1.8p52;
  return (x + kShifter) - kShifter;
}

// 2^e for -1022 <= e <= 1023.
double PowerOfTwo(int64_t e) { return std::bit_cast<double>(static_cast<uint64_t>(e + 1023) << 52); }

// 2 atanh(s) = 2 (s + s^3/3 + s^5/5 + ...) to terms below 2^-56 for |s| <= 1/3: log((1+s)/(1-s)).
double TwoAtanh(double s) {
  const double s2 = s * s;
  double sum = 0.0;
  for (int n = 37; n >= 3; n -= 2) sum = (sum + 1.0 / n) * s2;
  return 2.0 * (s + s * sum);
}

// log(1 + t) for 0 <= t <= 1, where t / (2 + t) <= 1/3.
double Log1pUnit(double t) { return TwoAtanh(t / (2.0 + t)); }

}  // namespace

double Exp(double x) {
  if (x != x) return x;
  if (x > 710.0) return std::numeric_limits<double>::infinity();
  if (x < -746.0) return 0.0;
  // x = (64 q + j) ln2/64 + r with |r| <= ln2/128: exp(x) = 2^q 2^(j/64) exp(r), exp(r) by its
  // Taylor series to degree 5 (remainder below 2^-54).
  constexpr double kScale = (1 << kExpTableBits) * std::numbers::log2e;
  constexpr double kStepHi = kLn2Hi / (1 << kExpTableBits), kStepLo = kLn2Lo / (1 << kExpTableBits);
  const double k = RoundToInteger(x * kScale);
  const double r = (x - k * kStepHi) - k * kStepLo;
  const double p = 1.0 + r * (1.0 + r * (1.0 / 2 + r * (1.0 / 6 + r * (1.0 / 24 + r * (1.0 / 120)))));
  const int64_t ki = static_cast<int64_t>(k);
  const int64_t q = ki >> kExpTableBits;  // floor(k / 64)
  // 2^q as 2^q1 2^q2 with |q1|, |q2| < 1023 (normal powers): the first product is exact, the
  // second rounds only below the normal range, as ldexp would (an out-of-line call).
  const int64_t q1 = q / 2, q2 = q - q1;
  return kExp2Table[ki & ((1 << kExpTableBits) - 1)] * p * PowerOfTwo(q1) * PowerOfTwo(q2);
}

double Log(double x) {
  if (!(x > 0.0) || x == std::numeric_limits<double>::infinity()) return std::log(x);
  // x = m 2^e with m in [sqrt(1/2), sqrt(2)); log m = 2 atanh((m - 1) / (m + 1)).
  int e = 0;
  double m = std::frexp(x, &e);  // exact, m in [1/2, 1)
  if (m < std::numbers::sqrt2 / 2) {
    m *= 2.0;
    --e;
  }
  return e * kLn2Hi + (e * kLn2Lo + TwoAtanh((m - 1.0) / (m + 1.0)));
}

void SinCos(double x, double* sin, double* cos) {
  // x = k pi/2 + r with |r| <= pi/4: pi/2 in three parts of 33, 33 and 53 bits, so k times the
  // first two is exact for |k| < 2^20.
  constexpr double kPio2_1 = 1.57079632673412561417e+00;
  constexpr double kPio2_2 = 6.07710050630396597660e-11;
  constexpr double kPio2_3 = 2.02226624879595063154e-21;
  const double k = RoundToInteger(x * (2.0 / std::numbers::pi));
  const double r = ((x - k * kPio2_1) - k * kPio2_2) - k * kPio2_3;
  // Taylor series of sin and cos on |r| <= pi/4 to degrees 19 and 18 (remainders below 2^-60).
  const double r2 = r * r;
  double sin_poly = 0.0, cos_poly = 0.0;
  for (int n = 9; n >= 0; --n) {
    sin_poly = sin_poly * r2 + kSinCoefficients[n];
    cos_poly = cos_poly * r2 + kCosCoefficients[n];
  }
  const double sr = r * sin_poly, cr = cos_poly;
  switch (static_cast<int64_t>(k) & 3) {
    case 0:
      *sin = sr;
      *cos = cr;
      break;
    case 1:
      *sin = cr;
      *cos = -sr;
      break;
    case 2:
      *sin = -sr;
      *cos = -cr;
      break;
    default:
      *sin = -cr;
      *cos = sr;
  }
}

double LogSigmoid(double x) {
  return x >= 0 ? -Log1pUnit(Exp(-x)) : x - Log1pUnit(Exp(x));
}

}  // namespace lizard
