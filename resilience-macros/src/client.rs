//! `client!("NAME")`: the settings of `[clients.NAME]`, checked at compile time, as a value that
//! builds a correctly configured `reqwest::Client` in one line.

use proc_macro2::TokenStream;
use quote::{ToTokens as _, quote};
use syn::parse::Parser as _;

use resilience_policy::config;
use resilience_policy::diag::Diags;
use resilience_policy::validate::read_client;
use resilience_policy::value::did_you_mean;

pub(crate) fn client(input: TokenStream) -> TokenStream {
    // The runtime's path, as `crate = "…"` gives it, for the value of an error too.
    let mut krate = quote!(::resilience_runtime);
    match build(input, &mut krate) {
        Ok(ts) => ts,
        Err(e) => {
            let e = e.into_compile_error();
            // Fail soft: a value of the right type, so the rest of the crate type-checks.
            quote!({ #e; #krate::ClientSettings::DEFAULT })
        }
    }
}

/// The runtime's path a `crate = "…"` names, if it is one.
fn crate_path(k: &syn::LitStr) -> Option<TokenStream> {
    match syn::parse_str::<syn::Path>(&k.value()) {
        Ok(p) if p.segments.iter().all(|s| s.arguments.is_none()) => Some(p.into_token_stream()),
        _ => None,
    }
}

fn build(input: TokenStream, krate_out: &mut TokenStream) -> syn::Result<TokenStream> {
    let parser = |s: syn::parse::ParseStream<'_>| {
        let name: syn::LitStr = s.parse()?;
        let mut config: Option<syn::LitStr> = None;
        let mut krate: Option<syn::LitStr> = None;
        while !s.is_empty() {
            s.parse::<syn::Token![,]>()?;
            if s.is_empty() {
                break;
            }
            let key: syn::Ident = syn::ext::IdentExt::parse_any(s)?;
            s.parse::<syn::Token![=]>()?;
            let v: syn::LitStr = s.parse()?;
            let slot = match key.to_string().as_str() {
                "config" => &mut config,
                "crate" => &mut krate,
                other => {
                    return Err(syn::Error::new(
                        key.span(),
                        format!(
                            "unknown key `{other}`: client! takes a name, then optionally config = \"…\" or crate = \"…\""
                        ),
                    ));
                }
            };
            if slot.is_some() {
                return Err(syn::Error::new(
                    key.span(),
                    format!("`{key}` given twice: which one is meant?"),
                ));
            }
            // Known as soon as read: the value after a later mistake names it too.
            if key == "crate"
                && let Some(p) = crate_path(&v)
            {
                *krate_out = p;
            }
            *slot = Some(v);
        }
        Ok((name, config, krate))
    };
    let (name, config_lit, krate) = parser.parse2(input)?;
    let span = name.span();
    let krate: TokenStream = match krate {
        Some(k) => crate_path(&k).ok_or_else(|| {
            syn::Error::new(
                k.span(),
                "`crate` takes a path: crate = \"::my_crate::resilience\"",
            )
        })?,
        None => quote!(::resilience_runtime),
    };
    let source_dir = crate::entry::proc_macro_source_dir();
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR").map(std::path::PathBuf::from);
    let located = config::locate(
        config_lit.as_ref().map(|c| c.value()).as_deref(),
        manifest_dir.as_deref(),
        source_dir.as_deref(),
    )
    .map_err(|m| syn::Error::new(span, m))?;
    let Some((path, display)) = located else {
        return Err(syn::Error::new(
            span,
            format!(
                "client!(\"{}\") needs a resilience.toml beside Cargo.toml with [clients.{}]",
                name.value(),
                name.value()
            ),
        ));
    };
    let cfg = config::load(&path, &display).map_err(|m| syn::Error::new(span, m))?;
    let mut diags = Diags::default();
    for m in &cfg.errors {
        diags.push(span, m);
    }
    let wanted = name.value();
    let Some(table) = cfg.clients.get(&wanted) else {
        let known: Vec<&str> = cfg.clients.keys().map(String::as_str).collect();
        let hint = did_you_mean(&wanted, &known)
            .map(|s| format!("; did you mean `{s}`?"))
            .unwrap_or_default();
        let unknown =
            format!("unknown client `{wanted}`: {display} has no [clients.{wanted}]{hint}");
        // Report the file's own errors too; after a syntax error, only those.
        if !cfg.unparsed {
            diags.push(span, &unknown);
        }
        return Err(diags
            .into_error()
            .unwrap_or_else(|| syn::Error::new(span, unknown)));
    };
    let (m, _) = read_client(&mut diags, &table.entries, span);
    // That its connect timeout is shorter than the attempt timeout is checked where the
    // attempt timeout is known: at each `#[resilient]` naming the client (its inline
    // settings included), and by `resilience check` for a policy no function uses. A
    // policy's own timeout here would refuse a client whose functions set theirs inline.
    if let Some(e) = diags.into_error() {
        return Err(e);
    }
    let d = crate::expand::dur;
    let (ct, pit, ka, idle) = (
        d(m.connect_timeout),
        d(m.pool_idle_timeout),
        d(m.tcp_keepalive),
        m.pool_max_idle_per_host,
    );
    let file = path.display().to_string();
    Ok(quote!({
        const _: &str = ::core::include_str!(#file);
        #krate::ClientSettings {
            connect_timeout: #ct,
            pool_idle_timeout: #pit,
            tcp_keepalive: #ka,
            pool_max_idle_per_host: #idle as usize,
        }
    }))
}
