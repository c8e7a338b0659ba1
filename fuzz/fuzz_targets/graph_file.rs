//! The graph file reader (`TNDMGRPH`, bincode payload, validation): any bytes give a graph or
//! an error, never a panic, a hang or an unbounded allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The reader takes a path (it bounds the file by its size first); /dev/shm keeps it in memory.
    let path = std::env::temp_dir().join(format!("tandem-fuzz-{}.tgraph", std::process::id()));
    std::fs::write(&path, data).unwrap();
    let _ = tandem_runtime::graph::read_graph_file(&path);
});
