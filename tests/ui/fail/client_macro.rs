// client!("NAME") reads [clients.NAME] at compile time, with the same file errors.
use resilience_runtime::client;

fn main() {
    let _unknown = client!("pgg", config = "../policies.toml");
    let _broken = client!("pg", config = "../syntax_error.toml");
}
