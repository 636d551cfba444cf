// Machine-independent transcendental functions, for everything whose bits must not depend on
// the CPU: the CPU backend's ops (engine/cpu/ops.h) and the RoPE tables (engine/model/rope.h).
#pragma once

namespace lizard {

// From IEEE additions, multiplications and divisions
// only: glibc picks an FMA or a non-FMA variant of exp, expf, log1p, pow, sin and cos per CPU, and
// those differ in the last bit for some arguments, which would make results depend on the CPU.
// Relative error a few double ulps; SinCos for |x| < 1.6e6 (beyond, still deterministic).
double Exp(double x);
double Log(double x);
void SinCos(double x, double* sin, double* cos);
// log(sigmoid(x)) computed without overflow.
double LogSigmoid(double x);

}  // namespace lizard
