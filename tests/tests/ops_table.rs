//! docs/ops.md must match what the code implements. After adding or removing a kernel,
//! regenerate it with `TANDEM_BLESS=1 cargo test -p tandem-tests --test ops_table`.

use std::path::Path;
use tandem_tests::ops_table::{OPS_MD, render};

#[test]
fn docs_ops_md_is_up_to_date() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ sits in the repository");
    let path = root.join(OPS_MD);
    let want = render(root);
    if std::env::var("TANDEM_BLESS").is_ok_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &want).unwrap();
        return;
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "{OPS_MD} is stale; regenerate it with TANDEM_BLESS=1 cargo test -p tandem-tests --test ops_table\n\
         expected:\n{want}"
    );
}
