//! Compile-time checks of `#[resilient]`: every rule has a failing case with a reviewed `.stderr`
//! snapshot, and every safe alternative a passing one. Refresh snapshots with
//! `TRYBUILD=overwrite cargo test -p resilience-ui-tests --test ui` and read the diff. The
//! package depends on what the cases use and nothing more: trybuild builds them against it in a
//! target directory of its own.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
}
