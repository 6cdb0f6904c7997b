// client!("NAME") reads [clients.NAME] at compile time, with the same file errors.
use resilience_runtime::client;

fn main() {
    let _unknown = client!("pgg", config = "../policies.toml");
    let _broken = client!("pg", config = "../syntax_error.toml");
}

fn with_a_generic_crate_path() {
    let _generic = client!("pg", config = "../policies.toml", crate = "my::reexport<u8>");
}

fn with_a_key_given_twice() {
    let _twice = client!("pg", config = "../policies.toml", config = "../bad_clients.toml");
}
