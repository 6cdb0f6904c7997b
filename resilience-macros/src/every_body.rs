//! Every function body of this workspace (its tests, examples, benchmarks and sources: several
//! thousand bodies of every shape the project writes), each made the body of an annotated
//! function under a few attributes and run through the whole attribute: the stamping rewrite
//! and the expansion never panic (a panic would reach the user as "proc macro panicked", with
//! no span), and what they emit is always Rust the compiler can parse (an error is a
//! `compile_error!` beside the function as written, never a token soup).

use std::path::{Path, PathBuf};
use std::str::FromStr as _;

use proc_macro2::TokenStream;

/// The bodies of every `fn`, method and `async` block of `file`.
fn bodies(file: &Path, out: &mut Vec<syn::Block>) {
    struct Collect<'a>(&'a mut Vec<syn::Block>);
    impl<'ast> syn::visit::Visit<'ast> for Collect<'_> {
        fn visit_item_fn(&mut self, f: &'ast syn::ItemFn) {
            self.0.push((*f.block).clone());
            syn::visit::visit_item_fn(self, f);
        }
        fn visit_impl_item_fn(&mut self, f: &'ast syn::ImplItemFn) {
            self.0.push(f.block.clone());
            syn::visit::visit_impl_item_fn(self, f);
        }
        fn visit_expr_async(&mut self, e: &'ast syn::ExprAsync) {
            self.0.push(e.block.clone());
            syn::visit::visit_expr_async(self, e);
        }
    }
    let text = std::fs::read_to_string(file).unwrap();
    // A file that is not Rust on its own (a trybuild case that must fail to parse) is skipped.
    if let Ok(parsed) = syn::parse_file(&text) {
        syn::visit::Visit::visit_file(&mut Collect(out), &parsed);
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every `.rs` file of the workspace's tests, examples, benchmarks and sources.
fn workspace_files() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut files = Vec::new();
    for dir in [
        "tests",
        "examples",
        "benches",
        "fault-server",
        "resilience-cli",
        "resilience-macros/src",
        "resilience-policy/src",
        "resilience-runtime",
        "ui-tests/tests",
    ] {
        rust_files(&root.join(dir), &mut files);
    }
    files.sort();
    files
}

/// The stamping rewrite changes a body only where it says it did (a send routed, a helper
/// wrapped): a body that sends nothing it rewrites is left exactly as written, token for
/// token, with or without client names to watch helpers through.
#[test]
fn the_rewrite_changes_a_body_only_where_it_counts_a_change() {
    let private = quote::quote!(::resilience_runtime::__private);
    let clients = ["c", "self", "client", "http"].map(String::from);
    let (mut bodies_seen, mut changed, mut failures) = (0usize, 0usize, Vec::new());
    for file in workspace_files() {
        let mut found = Vec::new();
        bodies(&file, &mut found);
        for body in found {
            for names in [None, Some(&clients[..])] {
                let before = quote::quote!(#body).to_string();
                let mut after = body.clone();
                let counted = crate::stamp::rewrite(&mut after, &private, names);
                let after = quote::quote!(#after).to_string();
                bodies_seen += 1;
                let counted = counted.rewritten + counted.helpers > 0;
                changed += usize::from(counted);
                if (before != after) != counted {
                    failures.push(format!(
                        "{} (client names: {}): changed {}, counted {counted}:\n{before}\n=>\n{after}",
                        file.display(),
                        names.is_some(),
                        before != after
                    ));
                }
            }
        }
    }
    // Both kinds are there: bodies that send (the tests' annotated functions) and bodies that
    // do not.
    assert!(
        changed > 200 && bodies_seen - changed > 2_000,
        "{changed} of {bodies_seen}"
    );
    assert!(failures.is_empty(), "{}", failures[0]);
}

#[test]
fn every_body_of_the_workspace_expands_without_panic_into_parseable_rust() {
    let files = workspace_files();
    // Free function and method, GET and keyed POST, retried and not, hedged.
    let shapes = [
        (
            "",
            "async fn f(c: &reqwest::Client, id: u64) -> Result<String, Error>",
        ),
        (
            "method = GET, max_attempts = 1",
            "async fn f(&self, x: String) -> std::io::Result<()>",
        ),
        (
            "idempotency_key = auto",
            "async fn f(c: &reqwest::Client, order: Order) -> Result<(), Box<dyn std::error::Error + Send + Sync>>",
        ),
        (
            "method = POST, idempotency_key = order.id",
            "async fn f(&mut self, order: Order) -> anyhow::Result<u8>",
        ),
        (
            "method = GET, hedge(delay = \"50ms\"), fallback = other",
            "async fn f(c: &reqwest::Client, id: u64) -> Result<String, Error>",
        ),
    ];
    let (mut expansions, mut failures) = (0usize, Vec::new());
    for file in &files {
        let mut found = Vec::new();
        bodies(file, &mut found);
        for (i, body) in found.iter().enumerate() {
            let body = quote::quote!(#body).to_string();
            let (args, sig) = shapes[i % shapes.len()];
            let item = TokenStream::from_str(&format!("{sig} {body}")).unwrap();
            let args = TokenStream::from_str(args).unwrap();
            expansions += 1;
            match std::panic::catch_unwind(|| crate::entry::resilient(args, item)) {
                Err(_) => failures.push(format!("{}: panicked on\n{body}", file.display())),
                Ok(out) => {
                    if let Err(e) = syn::parse2::<syn::File>(out.clone()) {
                        failures.push(format!(
                            "{}: emitted what does not parse ({e}):\n{out}",
                            file.display()
                        ));
                    }
                }
            }
        }
    }
    assert!(
        expansions > 2_000,
        "only {expansions} bodies found in the workspace"
    );
    assert!(
        failures.is_empty(),
        "{} of {expansions} expansions failed; the first:\n{}",
        failures.len(),
        failures[0]
    );
}
