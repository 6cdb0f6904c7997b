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

// A runtime re-exported under another path: the value given after a mistake is of that path's
// type (a second error, a type mismatch, once followed each mistake).
mod reexport {
    pub struct ClientSettings;
    impl ClientSettings {
        pub const DEFAULT: ClientSettings = ClientSettings;
    }
}

fn with_a_reexport_and_a_mistake() {
    let _one_error: reexport::ClientSettings =
        client!("pg", crate = "self::reexport", config = "../policies.toml", config = "../x.toml");
}
