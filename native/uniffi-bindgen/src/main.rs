//! uniffi-bindgen, pinned to the uniffi version ldk-node is built with.

fn main() {
    uniffi::uniffi_bindgen_main()
}
