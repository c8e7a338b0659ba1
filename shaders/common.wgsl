// Shared by every WGSL kernel: prepended to each shader file when it is compiled
// (runtime/src/backend/wgpu/kernels.rs), as cuda/common.cuh is included by the CUDA twins.
// Helpers only: no bindings and no entry points.

// erf as a rational approximation on [-4, 4]: the same formula and coefficients as
// runtime/src/ops/elementwise.rs, so that GELU agrees with the CPU reference.
fn erf(x_in: f32) -> f32 {
    let x = clamp(x_in, -4.0, 4.0);
    let x2 = x * x;
    var p = -2.7261423e-10;
    p = p * x2 + 2.7706814e-8;
    p = p * x2 - 2.101024e-6;
    p = p * x2 - 5.6925064e-5;
    p = p * x2 - 7.3499063e-4;
    p = p * x2 - 2.9546e-3;
    p = p * x2 - 1.6096033e-2;
    var q = -1.4566072e-5;
    q = q * x2 - 2.1337406e-4;
    q = q * x2 - 1.682827e-3;
    q = q * x2 - 7.373329e-3;
    q = q * x2 - 1.426474e-2;
    return x * p / q;
}

// A matmul epilogue's activation (ops::matmul::Activation::code): 0 none, 1 GELU (erf form),
// 2 ReLU.
fn activate(x: f32, code: u32) -> f32 {
    switch code {
        case 1u: {
            return 0.5 * x * (1.0 + erf(x * 0.70710678118654752));
        }
        case 2u: {
            return max(x, 0.0);
        }
        default: {
            return x;
        }
    }
}
