//! Re-exports ldk-node's uniffi scaffolding (the `uniffi_ldk_node_fn_*` symbols) from this
//! cdylib, so the generated `ldk_node.py` can load it as `libldk_node.so`.

ldk_node::uniffi_reexport_scaffolding!();
