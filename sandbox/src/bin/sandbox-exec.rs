//! The wrapper that the `sandbox` library starts for every run; see `sandbox::wrapper`.
fn main() {
    sandbox::wrapper::main()
}
