//! Routes the body's requests through the attempt's stamping, by type.
//!
//! Every zero-argument `.send()`, every one-argument `.execute(…)` and every `reqwest::get(…)`
//! in the body (closures and async blocks included, nested items not) is rewritten so that method resolution decides at
//! compile time what it is: a `reqwest::RequestBuilder` is sent stamped (key, request id,
//! trace, attempt, time left) and its response recorded; a `reqwest::Request` passed to
//! `execute` is stamped and the response recorded; any other receiver or argument is handed
//! on exactly as it was, so `.send()` on a channel or another client keeps its meaning.
//! Macro calls whose tokens parse as expressions (`tokio::join!(…)`, `format!(…)`), and the arms
//! of `select!` (tokio's and futures'), are rewritten inside too.

use proc_macro2::TokenStream;
use quote::{ToTokens as _, quote};
use syn::punctuated::Punctuated;
use syn::spanned::Spanned as _;
use syn::visit_mut::{self, VisitMut};

/// What the rewrite found.
#[derive(Debug, Default)]
pub(crate) struct Found {
    /// `.send()` and `.execute(…)` calls routed through the dispatch.
    pub rewritten: usize,
    /// A macro the rewrite cannot read holds what looks like a request sent (`.send(`,
    /// `.execute(`): it goes out unstamped and unseen, perhaps beside a keyed request of the
    /// same attempt, so the attempt is taken to have sent the least safe method.
    pub unreadable_sends: bool,
    /// Helpers awaited with the client wrapped in `helper(…)`.
    pub helpers: usize,
    /// A helper handed the client whose future the rewrite cannot watch: made in a closure
    /// (`ids.iter().map(|id| create_order(c, id))`), handed to a collection or a spawner
    /// (`set.push(create_order(c, o))`, `vec![…]`, `tokio::spawn(…)`), or kept in a binding
    /// polled later that has its type written or is handed on too. What it sends may go unseen
    /// beside the body's own requests, so the attempt is taken to have sent the least safe
    /// method, as for [`unreadable_sends`](Self::unreadable_sends).
    pub unwatched_helpers: bool,
}

/// `clients`: the names through which the body holds a client (parameters whose type is a
/// `…Client`, and `self`), when the function's method is inferred, not declared: a helper
/// the body awaits, handed one of them, is wrapped so that the attempt learns whether the
/// runtime saw it send (see `resilience_runtime`'s `helper`). `None`: no helper is wrapped.
impl Found {
    /// What the rewrite changed: sends routed and helpers wrapped.
    fn changes(&self) -> usize {
        self.rewritten + self.helpers
    }
}

thread_local! {
    /// The names the body being rewritten binds to `self` itself (`let this = &mut *self;`,
    /// the README's way to retry a `&mut self` method that moves `self`): `self` under another
    /// name, to every rule that treats `self` apart (see [`is_self`]).
    static SELF_NAMES: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Whether `name` is `self`, or a name the body binds to `self` itself ([`SELF_NAMES`]).
fn is_self(name: &str) -> bool {
    name == "self" || SELF_NAMES.with(|n| n.borrow().iter().any(|s| s == name))
}

/// Whether `e` is the path `self`, or one of its names ([`is_self`]).
fn is_self_path(e: &syn::Expr) -> bool {
    matches!(e, syn::Expr::Path(p) if p.qself.is_none() && p.path.get_ident().is_some_and(|i| is_self(&i.to_string())))
}

/// Sets [`SELF_NAMES`] for the rewrite of one body; cleared when dropped.
struct SelfNames;

impl SelfNames {
    fn set(names: Vec<String>) -> SelfNames {
        SELF_NAMES.with(|n| *n.borrow_mut() = names);
        SelfNames
    }
}

impl Drop for SelfNames {
    fn drop(&mut self) {
        SELF_NAMES.with(|n| n.borrow_mut().clear());
    }
}

pub(crate) fn rewrite(
    block: &mut syn::Block,
    private: &TokenStream,
    clients: Option<&[String]>,
) -> Found {
    // `rb.r#send()` is `rb.send()`: read it so, or it would go out unstamped and unseen.
    syn::visit_mut::VisitMut::visit_block_mut(&mut Unraw, block);
    let (aliased, self_names) = match clients {
        Some(c) => {
            let (aliased, self_names) = with_aliases(block, c);
            (Some(aliased), self_names)
        }
        None => (None, Vec::new()),
    };
    let _self_names = SelfNames::set(self_names);
    let clients = aliased.as_deref();
    let mut v = Rewriter {
        p: private,
        found: Found::default(),
        clients,
        self_clients: if clients.is_some_and(|c| c.iter().any(|c| c == "self")) {
            self_client_fields(block.to_token_stream())
        } else {
            Vec::new()
        },
    };
    if let Some(clients) = clients {
        let mut u = Unwatched {
            clients,
            named: without_self(clients),
            closures: 0,
            found: false,
            kept_tasks: kept_tasks(block),
        };
        syn::visit::Visit::visit_block(&mut u, block);
        v.found.unwatched_helpers = u.found;
    }
    v.visit_block_mut(block);
    v.found
}

/// Whether every request of a method less safe than GET that the body (as written, before the
/// rewrite) may send is one the runtime sees when it goes out (`Policy::sends_seen`): each
/// place showing such a method (`.post(`, `Method::DELETE`) is in the receiver of a `.send()`
/// the rewrite stamps, written in the body itself (not in a closure or an `async` block, which
/// may run in a spawned task, outside the attempt), and the body hands no client to a helper
/// (`clients` as for [`rewrite`]), has no helper's future the rewrite cannot watch, and no
/// macro it cannot read that sends. A POST built into a variable first, or sent with
/// `.execute(…)`, is not proven: the attempt keeps counting the policy's method as possibly
/// sent unseen.
pub(crate) fn sends_all_seen(block: &syn::Block, clients: &[String]) -> bool {
    let mut dry = block.clone();
    let found = rewrite(&mut dry, &quote!(P), Some(clients));
    if found.helpers > 0 || found.unwatched_helpers || found.unreadable_sends {
        return false;
    }
    let mut v = SeenSends {
        nested: 0,
        covered: 0,
    };
    syn::visit::Visit::visit_block(&mut v, block);
    v.covered == resilience_policy::infer::unsafe_evidence(block.to_token_stream())
}

/// Counts the places showing a method less safe than GET in the receivers of the body's own
/// `.send()`s, outside closures and `async` blocks (see [`sends_all_seen`]).
struct SeenSends {
    nested: usize,
    covered: usize,
}

impl<'ast> syn::visit::Visit<'ast> for SeenSends {
    fn visit_expr_method_call(&mut self, m: &'ast syn::ExprMethodCall) {
        if self.nested == 0 && m.method == "send" && m.args.is_empty() && m.turbofish.is_none() {
            self.covered += resilience_policy::infer::unsafe_evidence(m.receiver.to_token_stream());
            // Counted: a `.send()` inside the receiver is not counted again.
            return;
        }
        syn::visit::visit_expr_method_call(self, m);
    }

    fn visit_expr_closure(&mut self, c: &'ast syn::ExprClosure) {
        self.nested += 1;
        syn::visit::visit_expr_closure(self, c);
        self.nested -= 1;
    }

    fn visit_expr_async(&mut self, a: &'ast syn::ExprAsync) {
        self.nested += 1;
        syn::visit::visit_expr_async(self, a);
        self.nested -= 1;
    }

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        match MacroInput::read(mac) {
            Some(MacroInput::List(args)) => args.iter().for_each(|a| self.visit_expr(a)),
            Some(MacroInput::Arms(arms)) => arms.exprs().for_each(|(e, _)| self.visit_expr(e)),
            None => {}
        }
    }

    fn visit_item(&mut self, _: &'ast syn::Item) {}
}

/// Finds the helpers whose futures the rewrite cannot watch (see
/// [`Found::unwatched_helpers`]), in the body as written, before the rewrite.
///
/// A helper's future here is a call of a function handed a client, under future adapters,
/// parentheses or `Box::pin` (`create_order(c, o)`, `Box::pin(create_order(c, o).boxed())`).
/// Made in a closure it counts when handed a client parameter (`|id| create_order(c, id)`):
/// a closure handed `self` (`|o| price(&self.rates, o)`) is as likely to compute something.
/// Handed to a collection or a spawner, or an element of `vec![…]` or an array, it counts
/// handed a client parameter, and handed `self` where it can only be a future (see
/// [`Unwatched::collected`]). What an awaited call that the rewrite watches as a whole polls inside it
/// (`join_all(ids.iter().map(|id| create_order(c, id))).await`) is watched with it, and a
/// helper whose result a method of its own uses (`authed(c, u).send()`, a builder it made) is
/// not a future handed on.
struct Unwatched<'a> {
    clients: &'a [String],
    // The client parameters, `self` left out.
    named: Vec<String>,
    closures: usize,
    found: bool,
    /// The `async` blocks, closures and request builders the body binds to a name (`let task
    /// = async move { … };`), read where that name is handed to a spawner.
    kept_tasks: Vec<Binding<'a>>,
}

/// Methods that keep or run a future they are handed (a `Vec`'s, a `FuturesUnordered`'s, a
/// `JoinSet`'s).
const COLLECTING_METHODS: [&str; 7] = [
    "push",
    "push_back",
    "push_front",
    "insert",
    "extend",
    "spawn",
    "spawn_local",
];

/// Functions that keep or run the futures they are handed (`tokio::spawn`,
/// `futures::future::join_all`), by the last segment of their path.
const COLLECTING_FUNCTIONS: [&str; 11] = [
    "spawn",
    "spawn_local",
    "join",
    "try_join",
    "select",
    "join_all",
    "try_join_all",
    "select_all",
    "select_ok",
    "from_iter",
    "iter",
];

/// The last segment of a call's path, if the call is of a path.
fn callee(call: &syn::ExprCall) -> Option<String> {
    match &*call.func {
        syn::Expr::Path(p) => p.path.segments.last().map(|s| s.ident.to_string()),
        _ => None,
    }
}

/// Whether `e` is a helper's future handed one of `names`: a call of a function, under future
/// adapters, parentheses or `Box::pin`, one of whose arguments mentions one of them.
fn helper_future(e: &syn::Expr, names: &[String]) -> bool {
    helper_future_under(e, names, false)
}

/// [`helper_future`], through any method when `any_method` (a future handed to what runs it:
/// `tokio::spawn(create_order(c, o).timeout(d))`), not only [`FUTURE_ADAPTERS`] (a value pushed
/// into a `Vec` may be a URL computed from a client's base, `base(c).join(p)`).
fn helper_future_under(e: &syn::Expr, names: &[String], any_method: bool) -> bool {
    match e {
        syn::Expr::Call(call) if callee(call).as_deref() == Some("pin") => {
            call.args.len() == 1 && helper_future_under(&call.args[0], names, any_method)
        }
        syn::Expr::Call(call) => {
            callee(call).is_some()
                && call
                    .args
                    .iter()
                    .any(|a| mentions_any(a.to_token_stream(), names))
                && !hands_a_send(e)
        }
        syn::Expr::MethodCall(m) if FUTURE_ADAPTERS.contains(&m.method.to_string().as_str()) => {
            helper_future_under(&m.receiver, names, any_method)
        }
        // Any other method, as `hands_a_client` follows one: through a value a call handed a
        // client parameter made, or a helper reached through `self`; not a value from `self`
        // alone (`Arc::clone(&self.stats).flush()`).
        syn::Expr::MethodCall(m) if any_method && !hands_a_send(e) => {
            through_a_helpers_value(&m.receiver, names, |r, n| {
                helper_future_under(r, n, any_method)
            })
        }
        syn::Expr::Paren(p) => helper_future_under(&p.expr, names, any_method),
        // Chosen by an `if` or a `match`, or made in a block (see `hands_a_client`).
        e => any_value(e, &mut |v| helper_future_under(v, names, any_method)),
    }
}

/// Whether an `async` block or a closure among a spawner's `args` (`tokio::spawn(async move
/// { … })`, under `.instrument(span)` or `Box::pin` too, `set.spawn(…)`, `spawn_blocking(move
/// || …)`) sends what the runtime cannot see: it runs in a task of its own, outside the
/// attempt, where the rewrite's watch of a helper sees nothing and a request goes unstamped.
/// It awaits a helper handed a client parameter (`reserve(&c2, &sku).await`, under any name
/// the body gave it), a method of `self` (`this.place(o).await`) or a helper handed `self`'s
/// client (`place(&self.http, o)`); or sends a request showing a method less safe than GET
/// (`c.post(audit).send()`; not `c.get(u).send()`, nor a query's `.execute(&pool)`), or
/// none at all (`rb.send()`, a builder the body made and moved in; `c2.execute(req)`).
fn spawned_unseen(
    args: &Punctuated<syn::Expr, syn::Token![,]>,
    clients: &[String],
    kept: &[Binding<'_>],
) -> bool {
    struct Find<'k> {
        named: Vec<String>,
        kept: &'k [Binding<'k>],
        found: bool,
    }
    impl<'ast> syn::visit::Visit<'ast> for Find<'_> {
        fn visit_expr_await(&mut self, aw: &'ast syn::ExprAwait) {
            // A helper's future, also chosen by an `if` or a `match` (see `hands_a_client`).
            fn helper(e: &syn::Expr, named: &[String]) -> bool {
                match e {
                    syn::Expr::Call(call) => {
                        call.args
                            .iter()
                            .any(|a| mentions_any(a.to_token_stream(), named))
                            || call
                                .args
                                .iter()
                                .any(|a| hands_self_a_client(a.to_token_stream(), &[]))
                    }
                    syn::Expr::MethodCall(m) => {
                        !stamped_call(m)
                            && (hands_a_client(e, named)
                                || self_helper_value(e)
                                || m.args
                                    .iter()
                                    .any(|a| hands_self_a_client(a.to_token_stream(), &[])))
                    }
                    syn::Expr::Paren(p) => helper(&p.expr, named),
                    e => any_value(e, &mut |v| helper(v, named)),
                }
            }
            let mut base = &*aw.base;
            while let syn::Expr::MethodCall(m) = base
                && FUTURE_ADAPTERS.contains(&m.method.to_string().as_str())
            {
                base = &m.receiver;
            }
            if !hands_a_send(base) && helper(base, &self.named) {
                self.found = true;
            }
            syn::visit::visit_expr_await(self, aw);
        }
        fn visit_expr_method_call(&mut self, m: &'ast syn::ExprMethodCall) {
            if stamped_call(m) {
                // What the request is made of: the chain as written, or, where it starts from
                // a name the body bound (`let rb = c.post(audit);`), that binding's value.
                let unsafe_shown = |e: &syn::Expr| {
                    resilience_policy::infer::unsafe_evidence(e.to_token_stream()) > 0
                };
                // Every value the body binds to that name (not only the last: a binding
                // written after the spawn, `let rb = c.get(u);`, does not hide `c.post(a)`).
                let bound = |e: &syn::Expr| -> Vec<&syn::Expr> {
                    let syn::Expr::Path(p) = chain_root(e) else {
                        return Vec::new();
                    };
                    let Some(i) = p.path.get_ident() else {
                        return Vec::new();
                    };
                    // Builders and requests, as their method shows (not a value of another
                    // kind the name held first, `let q = q.trim().to_owned();`), and not one
                    // continuing the name's own earlier value (`let rb = rb.header(k, v);`:
                    // that value is read).
                    self.kept
                        .iter()
                        .filter(|(n, v)| {
                            *n == i
                                && task(v).is_none()
                                && (unsafe_shown(v) || shows_a_read(v) || makes_a_request(v))
                                && !matches!(chain_root(v), syn::Expr::Path(p) if p.path.is_ident(i))
                        })
                        .map(|(_, v)| *v)
                        .collect()
                };
                // No value bound (a parameter's builder), or any that does not read.
                let any_unread = |vs: Vec<&syn::Expr>| {
                    vs.is_empty() || vs.iter().any(|v| unsafe_shown(v) || !shows_a_read(v))
                };
                let flagged = if m.method == "send" {
                    // Showing a method less safe than GET (`c.post(audit).send()`), or none
                    // at all: a builder the body made and moved into the task (`let rb =
                    // c.post(audit); … rb.send()`), or one a parameter holds.
                    unsafe_shown(&m.receiver)
                        || (!shows_a_read(&m.receiver) && any_unread(bound(&m.receiver)))
                } else {
                    // A client's `execute(req)`, not a query's or a pool's (`.execute(&pool)`,
                    // `pool.execute("UPDATE …")`, `pool.execute(move || …)`): a request made
                    // by `.build()` or `Request::new`, or held in a name and handed to a
                    // client the body named (`c2.execute(req)`, `c2` a clone of `c`).
                    let a = &m.args[0];
                    let values = bound(a);
                    let built = makes_a_request(a) || values.iter().any(|v| makes_a_request(v));
                    let to_a_client = matches!(a, syn::Expr::Path(_))
                        && mentions_any(m.receiver.to_token_stream(), &self.named);
                    (built || to_a_client)
                        && (unsafe_shown(a) || (!shows_a_read(a) && any_unread(values)))
                };
                if flagged {
                    self.found = true;
                }
            }
            syn::visit::visit_expr_method_call(self, m);
        }
        fn visit_macro(&mut self, mac: &'ast syn::Macro) {
            match MacroInput::read(mac) {
                Some(MacroInput::List(args)) => args.iter().for_each(|a| self.visit_expr(a)),
                Some(MacroInput::Arms(arms)) => arms.exprs().for_each(|(e, _)| self.visit_expr(e)),
                None => {}
            }
        }
        fn visit_item(&mut self, _: &'ast syn::Item) {}
    }
    /// `e` under adapters (`.instrument(span)`, `.boxed()`), `Box::pin` and parentheses.
    fn unadapted(mut e: &syn::Expr) -> &syn::Expr {
        loop {
            match e {
                syn::Expr::Paren(p) => e = &p.expr,
                syn::Expr::MethodCall(m)
                    if FUTURE_ADAPTERS.contains(&m.method.to_string().as_str()) =>
                {
                    e = &m.receiver;
                }
                syn::Expr::Call(call)
                    if callee(call).as_deref() == Some("pin") && call.args.len() == 1 =>
                {
                    e = &call.args[0];
                }
                _ => return e,
            }
        }
    }
    /// The block or closure under adapters (`.instrument(span)`, `.boxed()`), `Box::pin` and
    /// parentheses.
    fn task(mut e: &syn::Expr) -> Option<&syn::Expr> {
        loop {
            match e {
                syn::Expr::Paren(p) => e = &p.expr,
                syn::Expr::MethodCall(m)
                    if FUTURE_ADAPTERS.contains(&m.method.to_string().as_str()) =>
                {
                    e = &m.receiver;
                }
                syn::Expr::Call(call)
                    if callee(call).as_deref() == Some("pin") && call.args.len() == 1 =>
                {
                    e = &call.args[0];
                }
                syn::Expr::Async(_) | syn::Expr::Closure(_) => return Some(e),
                _ => return None,
            }
        }
    }
    let mut f = Find {
        named: without_self(clients),
        kept,
        found: false,
    };
    for a in args {
        // A task made by a closure bound to a name and called there (`tokio::spawn(fire(hook))`,
        // under adapters too): any closure that name was bound to (a later binding may send
        // nothing).
        if let syn::Expr::Call(call) = unadapted(a)
            && let syn::Expr::Path(p) = &*call.func
            && let Some(i) = p.path.get_ident()
        {
            for (_, v) in kept.iter().filter(|(n, _)| *n == i) {
                if let Some(t @ syn::Expr::Closure(_)) = task(v) {
                    syn::visit::Visit::visit_expr(&mut f, t);
                }
            }
            continue;
        }
        // A task bound to a name first (`let t = async move { … }; tokio::spawn(t)`).
        let a = match a {
            syn::Expr::Path(p) => p
                .path
                .get_ident()
                // The last binding of that name to a task (`let task = tokio::spawn(task);`
                // after it binds the handle, not a task).
                .and_then(|i| {
                    kept.iter()
                        .rev()
                        .find(|(n, v)| *n == i && task(v).is_some())
                })
                .map_or(a, |(_, e)| *e),
            a => a,
        };
        if let Some(t) = task(a) {
            syn::visit::Visit::visit_expr(&mut f, t);
        }
    }
    f.found
}

/// Whether the builder chain `recv` (a `.send()`'s receiver) starts with a read: its first
/// method, the one called on the client (`tokens.get(u)…`, `c.request(Method::GET, u)…`; an
/// SDK's `s3.get_object()…`, `list_users()`, `describe_table()`, `head_object()`,
/// `batch_get_item()`, `query()`, `scan()`, `search…`, `find…`, `fetch…`, `read…`). What
/// the later methods are handed (`.queue_url(cfg.get(k))`) says nothing. A chain that starts
/// otherwise (`ledger.post(u)`, `send_message()`), or a builder held in a variable (`rb`), is
/// not known to be one.
fn starts_as_a_read(recv: &syn::Expr) -> bool {
    chain_methods(recv).last().is_some_and(|m| is_a_read(m))
}

/// The methods of the chain `e`, outermost first, and its innermost receiver (`rb` in
/// `rb.header(k, v).send()`), through `?`, `.await`, references and parentheses.
fn chain(mut e: &syn::Expr) -> (Vec<&syn::ExprMethodCall>, &syn::Expr) {
    let mut methods = Vec::new();
    loop {
        match e {
            syn::Expr::MethodCall(m) => {
                methods.push(m);
                e = &m.receiver;
            }
            syn::Expr::Paren(p) => e = &p.expr,
            syn::Expr::Reference(r) => e = &r.expr,
            syn::Expr::Try(t) => e = &t.expr,
            syn::Expr::Await(a) => e = &a.base,
            _ => return (methods, e),
        }
    }
}

/// The methods of the chain `e`, outermost first ([`chain`]).
fn chain_methods(e: &syn::Expr) -> Vec<&syn::ExprMethodCall> {
    chain(e).0
}

/// The innermost receiver of the method chain `e` ([`chain`]).
fn chain_root(e: &syn::Expr) -> &syn::Expr {
    chain(e).1
}

/// [`starts_as_a_read`] past the making of a client in the chain
/// (`Client::builder().build()?.get(u)`, `c.clone().get(u)`).
fn shows_a_read(e: &syn::Expr) -> bool {
    const MAKING: &[&str] = &["builder", "build", "clone", "unwrap", "expect", "as_ref"];
    chain_methods(e)
        .into_iter()
        .rev()
        .find(|m| !MAKING.contains(&m.method.to_string().as_str()))
        .is_some_and(is_a_read)
}

/// Whether `e` makes a request: a chain ending in `.build()` (`c.post(u).build()?`, unwrapped
/// or not), or `Request::new(…)`.
fn makes_a_request(e: &syn::Expr) -> bool {
    match e {
        syn::Expr::Try(t) => makes_a_request(&t.expr),
        syn::Expr::Paren(p) => makes_a_request(&p.expr),
        syn::Expr::MethodCall(m) if m.method == "build" => true,
        syn::Expr::MethodCall(m) if m.method == "unwrap" || m.method == "expect" => {
            makes_a_request(&m.receiver)
        }
        syn::Expr::Call(c) => {
            callee(c).as_deref() == Some("new")
                && matches!(&*c.func, syn::Expr::Path(p)
                    if p.path.segments.iter().any(|s| s.ident == "Request"))
        }
        _ => false,
    }
}

/// Whether the method called on the client, `m`, reads (see [`starts_as_a_read`]).
fn is_a_read(m: &syn::ExprMethodCall) -> bool {
    let name = m.method.to_string();
    if name == "request" {
        return m.args.first().is_some_and(|a| {
            resilience_policy::infer::infer_method(a.to_token_stream())
                .is_some_and(|i| i.method.is_safe())
        });
    }
    matches!(name.as_str(), "get" | "head" | "options" | "query" | "scan")
        || [
            "get_",
            "list",
            "describe",
            "head_",
            "batch_get",
            "search",
            "find",
            "fetch",
            "read",
        ]
        .iter()
        .any(|p| name.starts_with(p))
}

/// A name the body binds, and the value it binds it to (see [`kept_tasks`]).
type Binding<'a> = (&'a syn::Ident, &'a syn::Expr);

/// The `async` blocks, closures and request builders `block` binds to a name, anywhere in it
/// but nested items (see [`Unwatched::kept_tasks`]).
fn kept_tasks(block: &syn::Block) -> Vec<Binding<'_>> {
    struct Lets<'a>(Vec<Binding<'a>>);
    impl<'a> syn::visit::Visit<'a> for Lets<'a> {
        fn visit_local(&mut self, l: &'a syn::Local) {
            if let Some(init) = &l.init {
                self.bind(&l.pat, &init.expr);
            }
            syn::visit::visit_local(self, l);
        }
        fn visit_item(&mut self, _: &'a syn::Item) {}
    }
    impl<'a> Lets<'a> {
        /// `pat = value`, a name at a time (`let (c2, req) = (c.clone(), c.post(u).build()?);`).
        fn bind(&mut self, pat: &'a syn::Pat, value: &'a syn::Expr) {
            match (pat, value) {
                (syn::Pat::Ident(pi), v) if kept_value(v) => self.0.push((&pi.ident, v)),
                (syn::Pat::Type(t), v) => self.bind(&t.pat, v),
                (syn::Pat::Tuple(p), syn::Expr::Tuple(t)) if p.elems.len() == t.elems.len() => {
                    for (p, v) in p.elems.iter().zip(&t.elems) {
                        self.bind(p, v);
                    }
                }
                _ => {}
            }
        }
    }
    /// A task (an `async` block, a closure), or what a request is made of (a builder chain, a
    /// built request: [`spawned_unseen`] reads the method it shows).
    fn kept_value(v: &syn::Expr) -> bool {
        matches!(
            v,
            syn::Expr::Async(_)
                | syn::Expr::Closure(_)
                | syn::Expr::MethodCall(_)
                | syn::Expr::Try(_)
                | syn::Expr::Call(_)
        )
    }
    let mut lets = Lets(Vec::new());
    syn::visit::Visit::visit_block(&mut lets, block);
    lets.0
}

/// Whether `e` can only be a future: pinned or boxed on its way (`Box::pin(…)`, `.boxed()`,
/// `.fuse()`, `.instrument(…)`).
fn marked_future(e: &syn::Expr) -> bool {
    match e {
        syn::Expr::Call(call) => callee(call).as_deref() == Some("pin"),
        syn::Expr::MethodCall(m) => {
            [
                "boxed",
                "boxed_local",
                "fuse",
                "instrument",
                "in_current_span",
            ]
            .contains(&m.method.to_string().as_str())
                || marked_future(&m.receiver)
        }
        syn::Expr::Paren(p) => marked_future(&p.expr),
        _ => false,
    }
}

impl Unwatched<'_> {
    /// What `e` holds, `e` itself not taken for a future handed on (its value is used
    /// where it is: awaited, a method's receiver, a binding's value). Through future adapters
    /// and parentheses, the helper under them is not either.
    fn visit_used(&mut self, e: &syn::Expr) {
        match e {
            syn::Expr::MethodCall(m)
                if FUTURE_ADAPTERS.contains(&m.method.to_string().as_str()) =>
            {
                self.visit_used(&m.receiver);
                for a in &m.args {
                    syn::visit::Visit::visit_expr(self, a);
                }
            }
            syn::Expr::Paren(p) => self.visit_used(&p.expr),
            e => self.visit_inside(e),
        }
    }

    /// Handed to what keeps or runs it: a helper's future among `args` counts. Handed `self`
    /// (`place(&self.http, o)`), it counts where it can only be a future: handed to what runs
    /// futures (`futures_only`: `tokio::spawn`, `join_all`), or pinned or boxed on its way
    /// (`Box::pin(…)`, `.boxed()`); pushed as it is into a `Vec` it is as likely a value
    /// computed from `self` (`urls.push(url_for(&self.base, id))`).
    fn collected<'e>(&mut self, args: impl IntoIterator<Item = &'e syn::Expr>, futures_only: bool) {
        for a in args {
            let names = if futures_only || marked_future(a) {
                self.clients
            } else {
                &self.named
            };
            if helper_future_under(a, names, futures_only) {
                self.found = true;
            }
        }
    }
}

impl<'ast> syn::visit::Visit<'ast> for Unwatched<'_> {
    fn visit_expr(&mut self, e: &'ast syn::Expr) {
        if self.found {
            return;
        }
        if self.closures > 0 && helper_future(e, &self.named) {
            self.found = true;
            return;
        }
        self.visit_inside(e);
    }

    fn visit_block(&mut self, b: &'ast syn::Block) {
        self.visit_stmts(&b.stmts, b.stmts.len());
    }

    fn visit_local(&mut self, l: &'ast syn::Local) {
        // A binding's value is used where it is bound; what becomes of it is the kept
        // helpers' check (`Kept::of`).
        if let Some(init) = &l.init {
            self.visit_used(&init.expr);
            if let Some((_, diverge)) = &init.diverge {
                self.visit_expr(diverge);
            }
        }
    }

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        // Read as the rewrite reads them (`visit_macro_mut`): a list of expressions, after an
        // optional `biased;`, or `select!` arms. `vec![create_order(c, a), create_order(c, b)]`:
        // its elements are collected. `join!`'s futures and `select!`'s arm futures are polled
        // by the macro (the rewrite watches a helper among them); what their conditions,
        // handlers and the elements of other macros hold is read as the body's own
        // (`=> { tokio::spawn(create_order(c.clone(), o)); }`). Other macros: the rewrite's
        // rules for unreadable ones.
        let name = mac.path.segments.last().map(|s| s.ident.to_string());
        let name = name.as_deref().unwrap_or_default();
        match MacroInput::read(mac) {
            Some(MacroInput::List(args)) => {
                if name == "vec" {
                    self.collected(&args, false);
                }
                for a in &args {
                    if JOINING_MACROS.contains(&name) {
                        self.visit_used(a);
                    } else {
                        self.visit_expr(a);
                    }
                }
            }
            Some(MacroInput::Arms(arms)) => {
                for (e, future) in arms.exprs() {
                    if future {
                        self.visit_used(e);
                    } else {
                        self.visit_expr(e);
                    }
                }
            }
            None => {}
        }
    }

    fn visit_item(&mut self, _: &'ast syn::Item) {}
}

impl Unwatched<'_> {
    /// What a helper's future the rewrite watches holds besides it: for one chosen by an `if`
    /// or a `match`, or made in a block, its condition, scrutinee, guards and the block's
    /// other statements (`{ tokio::spawn(audit(c.clone(), o)); create_order(c, o) }`: they run
    /// before the watched future is polled), and the values that are not a helper's; nothing
    /// for a helper's call, watched whole.
    fn visit_around_values(&mut self, e: &syn::Expr) {
        use syn::visit::Visit as _;
        let block = |this: &mut Self, b: &syn::Block| match b.stmts.last() {
            Some(syn::Stmt::Expr(v, None)) => {
                this.visit_stmts(&b.stmts, b.stmts.len() - 1);
                this.visit_around_values(v);
            }
            _ => this.visit_stmts(&b.stmts, b.stmts.len()),
        };
        // Under adapters (`{ …; create_order(c, o) }.boxed()`, `Box::pin(if …)`): the same.
        if let Some(v) = chosen_value(e)
            && !std::ptr::eq(v, e)
        {
            return self.visit_around_values(v);
        }
        match e {
            syn::Expr::If(i) => {
                self.visit_expr(&i.cond);
                block(self, &i.then_branch);
                if let Some((_, v)) = &i.else_branch {
                    self.visit_around_values(v);
                }
            }
            syn::Expr::Match(m) => {
                self.visit_expr(&m.expr);
                for a in &m.arms {
                    // Its guard, in the pattern.
                    self.visit_pat(&a.pat);
                    self.visit_around_values(&a.body);
                }
            }
            syn::Expr::Block(b) => block(self, &b.block),
            syn::Expr::Unsafe(u) => block(self, &u.block),
            syn::Expr::Paren(p) => self.visit_around_values(&p.expr),
            e if hands_a_client(e, self.clients) => {}
            e => self.visit_used(e),
        }
    }

    /// The first `n` of `stmts`: a kept helper the rewrite wraps where it is made (`let all =
    /// join_all(…);` then `all.await`, judged by all the statements after it) is watched with
    /// whatever it polls inside; one chosen by an `if` or a `match`, or made in a block, has
    /// what else it holds (its condition, the block's other statements) read as the body's own.
    fn visit_stmts(&mut self, stmts: &[syn::Stmt], n: usize) {
        use syn::visit::Visit as _;
        for (i, stmt) in stmts[..n].iter().enumerate() {
            if let syn::Stmt::Local(l) = stmt
                && Kept::of(l, &stmts[i + 1..], self.clients) == Some(Kept::Watched)
            {
                if let Some(init) = &l.init {
                    let value = pinned(&init.expr);
                    if let Some(v) = chosen_value(value.as_ref().unwrap_or(&init.expr)) {
                        self.visit_around_values(v);
                    }
                }
                continue;
            }
            self.visit_stmt(stmt);
        }
    }

    /// What `e` holds, and `e` itself where it hands futures on; `e` is not taken for a
    /// future made in a closure.
    fn visit_inside(&mut self, e: &syn::Expr) {
        use syn::visit::Visit as _;
        match e {
            // Watched as a whole by the rewrite, with whatever it polls inside.
            syn::Expr::Await(aw)
                if !hands_a_send(&aw.base) && hands_a_client(&aw.base, self.clients) =>
            {
                if let Some(v) = chosen_value(&aw.base) {
                    self.visit_around_values(v);
                }
            }
            syn::Expr::Await(aw) => self.visit_used(&aw.base),
            syn::Expr::Closure(c) => {
                self.closures += 1;
                self.visit_expr(&c.body);
                self.closures -= 1;
            }
            syn::Expr::MethodCall(m)
                if !FUTURE_ADAPTERS.contains(&m.method.to_string().as_str()) =>
            {
                let name = m.method.to_string();
                if COLLECTING_METHODS.contains(&name.as_str()) {
                    self.collected(&m.args, name.starts_with("spawn"));
                }
                if name.starts_with("spawn")
                    && spawned_unseen(&m.args, self.clients, &self.kept_tasks)
                {
                    self.found = true;
                }
                self.visit_used(&m.receiver);
                for a in &m.args {
                    self.visit_expr(a);
                }
            }
            syn::Expr::Call(call) => {
                if let Some(name) = callee(call)
                    && COLLECTING_FUNCTIONS.contains(&name.as_str())
                {
                    let futures_only = !["from_iter", "iter"].contains(&name.as_str());
                    self.collected(&call.args, futures_only);
                }
                if callee(call).is_some_and(|n| n.starts_with("spawn"))
                    && spawned_unseen(&call.args, self.clients, &self.kept_tasks)
                {
                    self.found = true;
                }
                syn::visit::visit_expr_call(self, call);
            }
            syn::Expr::Array(a) => {
                self.collected(&a.elems, false);
                syn::visit::visit_expr_array(self, a);
            }
            e => syn::visit::visit_expr(self, e),
        }
    }
}

struct Rewriter<'a> {
    p: &'a TokenStream,
    found: Found,
    clients: Option<&'a [String]>,
    /// The fields of `self` the body builds requests on (see [`self_client_fields`]).
    self_clients: Vec<String>,
}

impl Rewriter<'_> {
    /// Whether `mac`, a macro of the user's own (not one of [`known_macro`]'s), is handed one
    /// of the body's clients: a client parameter, or `self`'s client (see
    /// [`hands_self_a_client`]). What it expands to may send unseen.
    fn hands_a_client_to(&self, mac: &syn::Macro) -> bool {
        self.clients.is_some_and(|clients| {
            !known_macro(mac)
                && (mentions_any(mac.tokens.clone(), &without_self(clients))
                    || (clients.iter().any(|c| c == "self")
                        && hands_self_a_client(mac.tokens.clone(), &self.self_clients)))
        })
    }

    /// [`hands_a_client`] with the body's client names; `false` when no helper is watched.
    fn hands_a_client(&self, e: &syn::Expr) -> bool {
        self.clients
            .is_some_and(|clients| hands_a_client(e, clients))
    }
}

/// An awaited call that is handed one of `clients`: a function given one (`create_order(c, o)`,
/// `recs(&self.http, id)`), a method of `self` or of a field of it (`self.place(o)`,
/// `self.payments.charge(o)`), a method of a client parameter (an extension trait), or any
/// method called on such a call's value (`create_order(c, o).timeout(d)`, tokio-util's;
/// `.then(…)`; `Api::new(c).fetch(id)`): watched whole where no adapter lets the rewrite
/// reach the helper inside. Not a `.send()` or `.execute(…)`, which the rewrite sees.
fn hands_a_client(e: &syn::Expr, clients: &[String]) -> bool {
    let mentions = |e: &syn::Expr| mentions_any(e.to_token_stream(), clients);
    match e {
        syn::Expr::Call(call) => {
            matches!(&*call.func, syn::Expr::Path(_)) && call.args.iter().any(mentions)
        }
        syn::Expr::MethodCall(m) => {
            let name = m.method.to_string();
            if name == "send" || name == "execute" {
                return false;
            }
            // A future adapted on its way to the `.await` (`create_order(c, o)
            // .instrument(span)`, `.boxed()`, `.map_err(E::from)`): the helper inside.
            if FUTURE_ADAPTERS.contains(&name.as_str()) && hands_a_client(&m.receiver, clients) {
                return true;
            }
            // Any other method of the value of a call handed a client parameter (`create_order
            // (c, o).timeout(d)`, `.then(…)`, `Api::new(c).fetch(id)`): the whole, which
            // `watch_base` wraps whole (they once went unwatched and unseen). Not through a
            // value reached from `self` alone (`Arc::clone(&self.sem).acquire_owned()`,
            // `self.limiter.clone().until_ready()`): as likely no request at all, and a helper
            // seen sending nothing stops the function's retries.
            if through_a_helpers_value(&m.receiver, clients, hands_a_client) {
                return true;
            }
            rooted_in(&m.receiver, clients) || m.args.iter().any(mentions)
        }
        syn::Expr::Paren(p) => hands_a_client(&p.expr, clients),
        // A helper's future chosen by an `if` or a `match`, or made in a block (`let order =
        // if rush { create_order(c, o).boxed() } else { … };`): watched whole, as one written
        // alone (it once went unwatched and unseen, its POST sent again with every retry).
        e => any_value(e, &mut |v| hands_a_client(v, clients)),
    }
}

/// Whether `f` holds for one of the expressions an `if`, a `match` or a block takes its value
/// from: a branch's last expression, an arm's body, the block's last expression (none for a
/// block ending in a statement); `false` for any other expression.
fn any_value(e: &syn::Expr, f: &mut dyn FnMut(&syn::Expr) -> bool) -> bool {
    fn last(b: &syn::Block) -> Option<&syn::Expr> {
        match b.stmts.last() {
            Some(syn::Stmt::Expr(e, None)) => Some(e),
            _ => None,
        }
    }
    match e {
        syn::Expr::If(i) => {
            last(&i.then_branch).is_some_and(&mut *f)
                || i.else_branch.as_ref().is_some_and(|(_, e)| f(e))
        }
        syn::Expr::Match(m) => m.arms.iter().any(|a| f(&a.body)),
        syn::Expr::Block(b) => last(&b.block).is_some_and(f),
        // An `unsafe fn` helper's future: `unsafe { place_unchecked(c, o) }.await`.
        syn::Expr::Unsafe(u) => last(&u.block).is_some_and(f),
        _ => false,
    }
}

/// The `if`, `match` or block `e` is, or is under methods called on its value, parentheses or
/// `Box::pin` (`{ …; create_order(c, o) }.boxed()`); none for any other expression.
fn chosen_value(e: &syn::Expr) -> Option<&syn::Expr> {
    match e {
        syn::Expr::If(_) | syn::Expr::Match(_) | syn::Expr::Block(_) | syn::Expr::Unsafe(_) => {
            Some(e)
        }
        syn::Expr::Paren(p) => chosen_value(&p.expr),
        syn::Expr::MethodCall(m) => chosen_value(&m.receiver),
        syn::Expr::Call(call) if callee(call).as_deref() == Some("pin") && call.args.len() == 1 => {
            chosen_value(&call.args[0])
        }
        _ => None,
    }
}

impl Rewriter<'_> {
    /// Wraps the helper in `e` in `helper(…)` where its future is made, under the adapters
    /// written after it (`create_order(c, o).fuse()` becomes `helper(create_order(c, o))
    /// .fuse()`), so that the adapted future keeps what its type promises (`FusedFuture` for
    /// `futures::select!`, `Unpin`, a `BoxFuture`'s type).
    fn watch_base(&mut self, e: &mut syn::Expr) {
        match e {
            syn::Expr::MethodCall(m)
                if FUTURE_ADAPTERS.contains(&m.method.to_string().as_str())
                    && self.hands_a_client(&m.receiver) =>
            {
                return self.watch_base(&mut m.receiver);
            }
            syn::Expr::Paren(p) => return self.watch_base(&mut p.expr),
            // Chosen by an `if` or a `match`, or made in a block: wrapped whole, below, which
            // keeps the branches' one type (a cached answer's `ready(…).left_future()` beside
            // the helper's `.right_future()`) and what their adapters promise (`Helper` is a
            // `FusedFuture` when what it wraps is).
            // `Box::pin(create_order(c, o))`: wrapped inside, so that what is kept is still a
            // pinned box (`.as_mut()` on it, `&mut` in `select!`).
            syn::Expr::Call(call)
                if callee(call).as_deref() == Some("pin")
                    && call.args.len() == 1
                    && self.hands_a_client(&call.args[0]) =>
            {
                return self.watch_base(&mut call.args[0]);
            }
            _ => {}
        }
        let span = e.span();
        let p = self.p;
        inside_braces(e, |base| {
            let base = unparenthesized(base);
            syn::parse_quote_spanned!(span=> #p::helper(#base))
        });
        self.found.helpers += 1;
    }

    /// `let fut = create_order(c, o);` with `fut` polled later in the block (`fut.await`,
    /// handed to `join!`, raced in `select!`) and used no other way: the helper is watched
    /// where its future is made, as an awaited one is. A binding with a type written, or used
    /// otherwise (a builder's method called on it), is left as it is.
    fn watch_kept_helpers(&mut self, stmts: &mut [syn::Stmt]) {
        for i in 0..stmts.len() {
            let (head, rest) = stmts.split_at_mut(i + 1);
            let syn::Stmt::Local(local) = &mut head[i] else {
                continue;
            };
            let Some(kept) = Kept::of(local, rest, self.clients.unwrap_or(&[])) else {
                continue;
            };
            let Some(init) = &mut local.init else {
                continue;
            };
            match kept {
                Kept::Unwatched => self.found.unwatched_helpers = true,
                // `let mut order = pin!(create_order(c, o));`: wrapped inside the `pin!`, so
                // that what is kept is still a pinned reference.
                Kept::Watched => match pinned(&init.expr) {
                    Some(mut inner) => {
                        self.watch_base(&mut inner);
                        if let syn::Expr::Macro(m) = &mut *init.expr {
                            m.mac.tokens = inner.to_token_stream();
                        }
                    }
                    None => self.watch_base(&mut init.expr),
                },
                Kept::Other => {}
            }
        }
    }
}

/// What becomes of a binding whose value hands a client on (`let fut = create_order(c, o);`),
/// from the statements after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kept {
    /// Polled later and used no other way, no type written: the rewrite wraps it where it is
    /// made (`watch_base`), a watched helper with whatever it polls inside.
    Watched,
    /// A helper's future polled where the rewrite cannot follow it (handed to a collection
    /// or a spawner), or of a type written that the wrapper would change: what it sends may
    /// go unseen.
    Unwatched,
    /// Anything else (a builder a helper made, a value computed from `self` or a client):
    /// left as it is.
    Other,
}

impl Kept {
    /// `local` with the statements `rest` after it in its block, the body's client names
    /// `clients`; `None` when it binds no single name to a value handing a client on.
    fn of(local: &syn::Local, rest: &[syn::Stmt], clients: &[String]) -> Option<Kept> {
        // `let fut: BoxFuture<'_, _> = …`: its type written, it cannot be wrapped.
        let (pat, typed) = match &local.pat {
            syn::Pat::Ident(pat) => (pat, false),
            syn::Pat::Type(t) => match &*t.pat {
                syn::Pat::Ident(pat) => (pat, true),
                _ => return None,
            },
            _ => return None,
        };
        if pat.by_ref.is_some() || pat.subpat.is_some() {
            return None;
        }
        let init = local.init.as_ref()?;
        let pinned = pinned(&init.expr);
        let value = pinned.as_ref().unwrap_or(&init.expr);
        if init.diverge.is_some() || hands_a_send(value) || !hands_a_client(value, clients) {
            return None;
        }
        let name = &pat.ident;
        // A client of the body's own making (`let c2 = Arc::clone(&c)`, `let api =
        // OrderApi::new(c)`): its calls are helpers, watched where they are awaited.
        if clients.iter().any(|c| pat.ident == c) {
            return None;
        }
        let mut uses = Uses {
            name,
            polled: 0,
            other: 0,
            handed_on: 0,
            through: 0,
        };
        for s in rest {
            // Up to a `let` that binds the name again: what follows it is another binding.
            if let syn::Stmt::Local(l) = s
                && binds(&l.pat, name)
            {
                if let Some(init) = &l.init {
                    syn::visit::Visit::visit_local_init(&mut uses, init);
                }
                break;
            }
            syn::visit::Visit::visit_stmt(&mut uses, s);
        }
        // Only a helper's future counts as one handed on: not `let c2 = c.clone();` moved
        // into a task, nor `let s = self.sku(id);` pushed into a query.
        let named = without_self(clients);
        let future = helper_future(value, &named)
            || ((pinned.is_some() || marked_future(value)) && helper_future(value, clients));
        Some(
            // A helper's future awaited through what the rewrite does not follow (an adapter of
            // the service's own, `order.within(d).await`; `join3(order, …).await`): polled
            // where the rewrite cannot watch it, what it sends may go unseen.
            // Not a value a type's constructor made of the client (`Mutex::new(c.clone())`,
            // whose `.lock().await` sends nothing).
            if future
                && (uses.handed_on > 0
                    || (uses.through > 0 && !constructed(value))
                    || (typed && uses.polled > 0))
            {
                Kept::Unwatched
            } else if !typed && uses.polled > 0 && uses.other == 0 {
                Kept::Watched
            } else {
                Kept::Other
            },
        )
    }
}

/// The future in `std::pin::pin!(…)` (or `futures::pin_mut!`'s sibling `pin!`), when `e` is
/// one.
fn pinned(e: &syn::Expr) -> Option<syn::Expr> {
    let syn::Expr::Macro(m) = e else {
        return None;
    };
    if m.mac.path.segments.last()?.ident != "pin" {
        return None;
    }
    syn::parse2::<syn::Expr>(m.mac.tokens.clone()).ok()
}

/// Whether `pat` binds `name`.
fn binds(pat: &syn::Pat, name: &syn::Ident) -> bool {
    struct Find<'n>(&'n syn::Ident, bool);
    impl<'ast> syn::visit::Visit<'ast> for Find<'_> {
        fn visit_pat_ident(&mut self, p: &'ast syn::PatIdent) {
            self.1 |= p.ident == *self.0;
            syn::visit::visit_pat_ident(self, p);
        }
    }
    let mut f = Find(name, false);
    syn::visit::Visit::visit_pat(&mut f, pat);
    f.1
}

/// How a binding is used in the statements after it: polled as a future (awaited, through
/// adapters, `&mut` or `.as_mut()`; an argument of `join!`/`try_join!`; a `select!` arm's
/// future), or otherwise (`pin!`/`pin_mut!` of it counts as neither); and how often it is
/// handed to what keeps or runs futures (`futs.push(fut)`, `vec![fut, …]`, `tokio::spawn(fut)`,
/// `join_all([fut, …])`), counted among the other uses too.
struct Uses<'n> {
    name: &'n syn::Ident,
    polled: usize,
    other: usize,
    handed_on: usize,
    /// Awaited through what the rewrite does not follow: a method chain on the binding that
    /// sends nothing itself (`order.within(d).await`, not `rb.send().await`), or a call handed
    /// it (`join3(order, …).await`).
    through: usize,
}

impl Uses<'_> {
    /// Whether `e` is the binding itself, under parentheses, `&mut`, `.as_mut()` or adapters.
    fn is_polled(&self, e: &syn::Expr) -> bool {
        match e {
            syn::Expr::Path(p) => p.qself.is_none() && p.path.is_ident(self.name),
            syn::Expr::Paren(p) => self.is_polled(&p.expr),
            syn::Expr::Reference(r) => r.mutability.is_some() && self.is_polled(&r.expr),
            syn::Expr::MethodCall(m) => {
                let name = m.method.to_string();
                (name == "as_mut" || FUTURE_ADAPTERS.contains(&name.as_str()))
                    && self.is_polled(&m.receiver)
            }
            _ => false,
        }
    }

    /// Counts the binding among `args` handed to what keeps or runs futures (under `Box::pin`
    /// too).
    fn count_handed_on<'e>(&mut self, args: impl IntoIterator<Item = &'e syn::Expr>) {
        fn unpinned(e: &syn::Expr) -> &syn::Expr {
            match e {
                syn::Expr::Call(call)
                    if callee(call).as_deref() == Some("pin") && call.args.len() == 1 =>
                {
                    unpinned(&call.args[0])
                }
                e => e,
            }
        }
        let n = args
            .into_iter()
            .filter(|a| self.is_polled(unpinned(a)))
            .count();
        self.handed_on += n;
    }

    /// Whether `args` of a spawner (`tokio::spawn(async move { fut.await })`) mention the
    /// binding: polled there, it runs in a task of its own, outside the attempt, and counts as
    /// handed on.
    fn spawned(&mut self, args: &Punctuated<syn::Expr, syn::Token![,]>) -> bool {
        let name = [self.name.to_string()];
        let found = args
            .iter()
            .any(|a| mentions_any(a.to_token_stream(), &name));
        if found {
            self.handed_on += 1;
            self.other += 1;
        }
        found
    }

    /// Whether the awaited `e` polls the binding through what the rewrite does not follow (see
    /// `through`).
    fn awaited_through(&self, e: &syn::Expr) -> bool {
        match e {
            syn::Expr::Paren(p) => self.awaited_through(&p.expr),
            syn::Expr::MethodCall(_) => {
                let mut at = e;
                loop {
                    match at {
                        syn::Expr::MethodCall(m) => {
                            let name = m.method.to_string();
                            if name.starts_with("send") || name.starts_with("execute") {
                                return false;
                            }
                            at = &m.receiver;
                        }
                        syn::Expr::Paren(p) => at = &p.expr,
                        _ => return self.is_polled(at),
                    }
                }
            }
            syn::Expr::Call(call) => call.args.iter().any(|a| self.is_polled(a)),
            _ => false,
        }
    }

    /// Counts `e`: polled where it is the binding, otherwise whatever it holds.
    fn polled_or_visit(&mut self, e: &syn::Expr) {
        if self.is_polled(e) {
            self.polled += 1;
        } else {
            syn::visit::Visit::visit_expr(self, e);
        }
    }
}

impl<'ast> syn::visit::Visit<'ast> for Uses<'_> {
    fn visit_expr_await(&mut self, aw: &'ast syn::ExprAwait) {
        // `tokio::time::timeout(d, fut).await`: polled inside the timeout, in the attempt.
        if let syn::Expr::Call(call) = &*aw.base
            && let syn::Expr::Path(func) = &*call.func
            && func
                .path
                .segments
                .last()
                .is_some_and(|s| s.ident == "timeout" || s.ident == "timeout_at")
        {
            for a in &call.args {
                self.polled_or_visit(a);
            }
            return;
        }
        if !self.is_polled(&aw.base) && self.awaited_through(&aw.base) {
            self.through += 1;
        }
        self.polled_or_visit(&aw.base);
    }
    fn visit_expr_path(&mut self, p: &'ast syn::ExprPath) {
        if p.qself.is_none() && p.path.is_ident(self.name) {
            self.other += 1;
        }
    }
    fn visit_expr_method_call(&mut self, m: &'ast syn::ExprMethodCall) {
        let name = m.method.to_string();
        if name.starts_with("spawn") && self.spawned(&m.args) {
            return;
        }
        if COLLECTING_METHODS.contains(&name.as_str()) {
            self.count_handed_on(&m.args);
        }
        syn::visit::visit_expr_method_call(self, m);
    }
    fn visit_expr_call(&mut self, call: &'ast syn::ExprCall) {
        let name = callee(call);
        if name.as_deref().is_some_and(|c| c.starts_with("spawn")) && self.spawned(&call.args) {
            return;
        }
        if name.is_some_and(|c| COLLECTING_FUNCTIONS.contains(&c.as_str())) {
            self.count_handed_on(&call.args);
        }
        syn::visit::visit_expr_call(self, call);
    }
    fn visit_expr_array(&mut self, a: &'ast syn::ExprArray) {
        self.count_handed_on(&a.elems);
        syn::visit::visit_expr_array(self, a);
    }
    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        if !mentions_any(mac.tokens.clone(), &[self.name.to_string()]) {
            return;
        }
        let last = mac.path.segments.last().map(|s| s.ident.to_string());
        let last = last.as_deref().unwrap_or("");
        let (_, tokens) = split_biased(&mac.tokens);
        let args = syn::parse::Parser::parse2(
            Punctuated::<syn::Expr, syn::Token![,]>::parse_terminated,
            tokens,
        );
        match (last, args) {
            ("pin" | "pin_mut", Ok(args)) => {
                for a in &args {
                    if !self.is_polled(a) {
                        syn::visit::Visit::visit_expr(self, a);
                    }
                }
            }
            ("join" | "try_join", Ok(args)) => {
                for a in &args {
                    self.polled_or_visit(a);
                }
            }
            (_, Ok(args)) => {
                if last == "vec" {
                    self.count_handed_on(&args);
                }
                for a in &args {
                    syn::visit::Visit::visit_expr(self, a);
                }
            }
            ("select" | "select_biased", Err(_)) => {
                match syn::parse::Parser::parse2(SelectArms::parse, mac.tokens.clone()) {
                    Ok(arms) => {
                        for p in &arms.parts {
                            match p {
                                SelectPart::Expr(e, true) => self.polled_or_visit(e),
                                SelectPart::Expr(e, false) => {
                                    syn::visit::Visit::visit_expr(self, e)
                                }
                                SelectPart::Tokens(_) => {}
                            }
                        }
                    }
                    Err(_) => self.other += 1,
                }
            }
            // Read no further: used some unknown way.
            _ => self.other += 1,
        }
    }
    fn visit_item(&mut self, _: &'ast syn::Item) {}
}

/// Methods that adapt a future (tracing's, `futures`' `FutureExt` and `TryFutureExt`) without
/// running anything of their own.
const FUTURE_ADAPTERS: [&str; 11] = [
    "instrument",
    "in_current_span",
    "boxed",
    "boxed_local",
    "fuse",
    "map",
    "map_ok",
    "map_err",
    "err_into",
    "inspect",
    "inspect_err",
];

/// Whether `mac` is one of the standard library's, `tokio`'s, `futures`', `tracing`'s,
/// `serde_json`'s, `anyhow`'s, `eyre`'s, `metrics`' or `sqlx`'s, which format, check, build, count or
/// poll their arguments, or query a database, and send
/// nothing of their own.
fn known_macro(mac: &syn::Macro) -> bool {
    const KNOWN: [&str; 53] = [
        "format",
        "format_args",
        "print",
        "println",
        "eprint",
        "eprintln",
        "write",
        "writeln",
        "panic",
        "assert",
        "assert_eq",
        "assert_ne",
        "debug_assert",
        "debug_assert_eq",
        "debug_assert_ne",
        "vec",
        "matches",
        "dbg",
        "todo",
        "unimplemented",
        "unreachable",
        "concat",
        "stringify",
        "join",
        "try_join",
        "select",
        "select_biased",
        "pin",
        "pin_mut",
        "trace",
        "debug",
        "info",
        "warn",
        "error",
        "event",
        "span",
        "trace_span",
        "debug_span",
        "info_span",
        "warn_span",
        "error_span",
        "json",
        "anyhow",
        "eyre",
        "format_err",
        "bail",
        "ensure",
        // `metrics`' recording macros.
        "counter",
        "gauge",
        "histogram",
        "describe_counter",
        "describe_gauge",
        "describe_histogram",
    ];
    // sqlx's queries (a database, not HTTP), written with their crate: a `query!` of one's own
    // may send a GraphQL POST.
    const SQLX: [&str; 3] = ["query", "query_as", "query_scalar"];
    let segments = &mac.path.segments;
    segments.last().is_some_and(|s| {
        let name = s.ident.to_string();
        KNOWN.contains(&name.as_str())
            || (SQLX.contains(&name.as_str())
                && segments.len() > 1
                && segments.first().is_some_and(|f| f.ident == "sqlx"))
    })
}

/// Macros that poll the futures they are handed (`tokio::join!(create_order(c, o), …)`): a
/// helper among them is watched as an awaited one is.
const JOINING_MACROS: [&str; 2] = ["join", "try_join"];

/// The client parameters among `clients`, `self` (and its other names) left out.
fn without_self(clients: &[String]) -> Vec<String> {
    clients.iter().filter(|c| !is_self(c)).cloned().collect()
}

/// A call the rewrite stamps: `.send()`, or `.execute(…)` with one argument.
fn stamped_call(m: &syn::ExprMethodCall) -> bool {
    (m.method == "send" && m.args.is_empty()) || (m.method == "execute" && m.args.len() == 1)
}

/// Whether `e` holds a `.send()` or `.execute(…)` that is not awaited where it is written: a
/// request handed on as a future (to a timeout, a `join_all`, a `Box::pin`).
fn hands_a_send(e: &syn::Expr) -> bool {
    struct Find(bool);
    fn is_send(e: &syn::Expr) -> bool {
        matches!(e, syn::Expr::MethodCall(m) if stamped_call(m))
    }
    impl<'ast> syn::visit::Visit<'ast> for Find {
        fn visit_expr_await(&mut self, aw: &'ast syn::ExprAwait) {
            // An `.execute(…)` the rewrite wrapped to observe it: `match new(call) { … }`.
            let base = match &*aw.base {
                syn::Expr::Match(mm) => match &*mm.expr {
                    syn::Expr::Call(c) if c.args.len() == 1 && is_send(&c.args[0]) => &c.args[0],
                    _ => &*aw.base,
                },
                base => base,
            };
            match base {
                // Awaited where it is written: what is inside it may still hand one on.
                syn::Expr::MethodCall(m) if is_send(base) => {
                    self.visit_expr(&m.receiver);
                    for a in &m.args {
                        self.visit_expr(a);
                    }
                    // The rest of the observing `match`, if any, holds nothing of the body's.
                }
                base => self.visit_expr(base),
            }
        }
        fn visit_expr_method_call(&mut self, m: &'ast syn::ExprMethodCall) {
            if stamped_call(m) {
                self.0 = true;
            }
            syn::visit::visit_expr_method_call(self, m);
        }
        fn visit_item(&mut self, _: &'ast syn::Item) {}
    }
    let mut f = Find(false);
    syn::visit::Visit::visit_expr(&mut f, e);
    f.0
}

/// `clients` and the names the body binds to one of them under another name: a client
/// parameter's (`let c2 = c.clone();`, `let (c2, s) = (c.clone(), sku);`, `Arc::clone(&c)`,
/// `Arc::new(c.clone())`), or a field of `self` holding a client (`let http = &self.http;`,
/// `let Self { http, .. } = self;`, `if let Some(h) = &self.http_client`; see
/// [`hands_self_a_client`]): a helper handed one is handed the client. And, apart, the names
/// bound to `self` itself (`let this = &mut *self;`), which every rule then reads as `self`
/// ([`is_self`]).
/// Whether `e` is a type's constructor called (`Type::new(…)`, `Type::from(…)`,
/// `Type::with_…(…)`, `Type::default()`): a value, not a helper's future.
fn constructed(e: &syn::Expr) -> bool {
    matches!(e, syn::Expr::Call(call)
    if matches!(&*call.func, syn::Expr::Path(p) if p.path.segments.len() >= 2)
        && callee(call).is_some_and(|c| {
            matches!(c.as_str(), "new" | "from" | "default" | "builder")
                || c.starts_with("with_")
                || c.starts_with("from_")
        }))
}

/// Types made of a client that are no service's wrapper of it: locks, cells, containers.
const NOT_WRAPPERS: [&str; 14] = [
    "Mutex",
    "RwLock",
    "RefCell",
    "Cell",
    "OnceCell",
    "OnceLock",
    "LazyLock",
    "Vec",
    "Option",
    "HashMap",
    "BTreeMap",
    "Cow",
    "Pin",
    "ManuallyDrop",
];

fn with_aliases(block: &syn::Block, clients: &[String]) -> (Vec<String>, Vec<String>) {
    /// What `e` is, through references, dereferences, parentheses, clones and `Arc::new`:
    /// `Some(true)` `self` itself (or one of `selves`), `Some(false)` a client (one of
    /// `names`, or a field of `self` holding one), `None` neither.
    fn value(
        e: &syn::Expr,
        names: &[String],
        selves: &[String],
        fields: &[String],
    ) -> Option<bool> {
        let is_self = |e: &syn::Expr| matches!(e, syn::Expr::Path(p) if p.path.get_ident().is_some_and(|i| i == "self" || selves.iter().any(|s| i == s)));
        match e {
            _ if is_self(e) && names.iter().any(|n| n == "self") => Some(true),
            syn::Expr::Path(p) => p
                .path
                .get_ident()
                .is_some_and(|i| names.iter().any(|n| i == n))
                .then_some(false),
            // `self.http`, and one field down or more (`self.inner.http`).
            syn::Expr::Field(_) if names.iter().any(|n| n == "self") => {
                let mut chain = Vec::new();
                let mut at = e;
                while let syn::Expr::Field(f) = at {
                    let syn::Member::Named(field) = &f.member else {
                        return None;
                    };
                    chain.push(field);
                    at = &f.base;
                }
                // What is bound is the last field (`self.inner.http`), not another under a
                // client-named one (`self.client.poll_interval`).
                let last = chain.first().map(ToString::to_string);
                (is_self(at) && last.is_some_and(|f| fields.contains(&f) || named_for_a_client(&f)))
                    .then_some(false)
            }
            // A getter of `self` named for a client (`self.client()`, `self.http()`).
            syn::Expr::MethodCall(m)
                if m.args.is_empty()
                    && is_self(&m.receiver)
                    && names.iter().any(|n| n == "self")
                    && named_for_a_client(&m.method.to_string()) =>
            {
                Some(false)
            }
            syn::Expr::Reference(r) => value(&r.expr, names, selves, fields),
            syn::Expr::Unary(u) if matches!(u.op, syn::UnOp::Deref(_)) => {
                value(&u.expr, names, selves, fields)
            }
            syn::Expr::Paren(p) => value(&p.expr, names, selves, fields),
            syn::Expr::MethodCall(m)
                if m.args.is_empty()
                    && ["clone", "to_owned", "as_ref", "as_mut", "borrow"]
                        .iter()
                        .any(|n| m.method == n) =>
            {
                value(&m.receiver, names, selves, fields)
            }
            // `Arc::clone(&c)`, `Clone::clone(&c)`, `Arc::new(c.clone())`.
            syn::Expr::Call(call)
                if call.args.len() == 1
                    && matches!(callee(call).as_deref(), Some("clone" | "new"))
                    && (callee(call).as_deref() == Some("clone")
                        || matches!(&*call.func, syn::Expr::Path(p)
                            if p.path.segments.len() == 2
                                && ["Arc", "Rc", "Box"]
                                    .iter()
                                    .any(|t| p.path.segments[0].ident == t))) =>
            {
                value(&call.args[0], names, selves, fields)
            }
            // A service's wrapper made of the client (`OrderApi::new(c)`,
            // `Orders::with_client(c.clone(), base)`): a client of the body's too, its calls
            // helpers handed the client (`api.place(o).await`), as `OrderApi::new(c).place(o)`.
            // Not a lock or a cell around it (`Mutex::new(c.clone())`: its `.lock()` sends
            // nothing), nor `self` made another type (`OrderView::from(self)`).
            syn::Expr::Call(call)
                if matches!(&*call.func, syn::Expr::Path(p)
                if p.path.segments.len() >= 2
                    && !NOT_WRAPPERS.iter().any(|t| {
                        p.path.segments[p.path.segments.len() - 2].ident == t
                    }))
                    && matches!(
                        callee(call).as_deref(),
                        Some("new" | "from" | "with_client" | "with_http")
                    )
                    && call
                        .args
                        .iter()
                        .any(|a| value(a, names, selves, fields) == Some(false)) =>
            {
                Some(false)
            }
            _ => None,
        }
    }
    struct Lets<'n> {
        names: &'n [String],
        selves: &'n [String],
        fields: &'n [String],
        /// (name, is `self`).
        out: Vec<(String, bool)>,
    }
    impl Lets<'_> {
        /// The names `pat` binds to what `init` holds, where that is a client or `self`.
        fn bind(&mut self, pat: &syn::Pat, init: &syn::Expr) {
            let mut init = init;
            while let syn::Expr::Paren(p) = init {
                init = &p.expr;
            }
            let found = || value(init, self.names, self.selves, self.fields);
            match pat {
                syn::Pat::Ident(pi) if pi.subpat.is_none() => {
                    if let Some(is_self) = found() {
                        self.out.push((pi.ident.to_string(), is_self));
                    }
                }
                syn::Pat::Type(t) => self.bind(&t.pat, init),
                syn::Pat::Tuple(t) => {
                    if let syn::Expr::Tuple(e) = init
                        && e.elems.len() == t.elems.len()
                    {
                        for (p, e) in t.elems.iter().zip(&e.elems) {
                            self.bind(p, e);
                        }
                    }
                }
                // `if let Some(h) = &self.http_client`, `Ok(c)`: what it holds.
                syn::Pat::TupleStruct(ts) if ts.elems.len() == 1 => {
                    if found() == Some(false)
                        && let Some(syn::Pat::Ident(pi)) = ts.elems.first()
                    {
                        self.out.push((pi.ident.to_string(), false));
                    }
                }
                // `let Self { http, .. } = self;`: the fields holding a client.
                syn::Pat::Struct(st) if found() == Some(true) => {
                    for f in &st.fields {
                        if let syn::Member::Named(field) = &f.member
                            && let syn::Pat::Ident(pi) = &*f.pat
                            && hands_self_a_client(quote!(self.#field), self.fields)
                        {
                            self.out.push((pi.ident.to_string(), false));
                        }
                    }
                }
                _ => {}
            }
        }
    }
    impl<'ast> syn::visit::Visit<'ast> for Lets<'_> {
        fn visit_local(&mut self, l: &'ast syn::Local) {
            if let Some(init) = &l.init {
                self.bind(&l.pat, &init.expr);
            }
            syn::visit::visit_local(self, l);
        }
        fn visit_expr_let(&mut self, l: &'ast syn::ExprLet) {
            self.bind(&l.pat, &l.expr);
            syn::visit::visit_expr_let(self, l);
        }
        fn visit_item(&mut self, _: &'ast syn::Item) {}
    }
    let fields = if clients.iter().any(|c| c == "self") {
        self_client_fields(block.to_token_stream())
    } else {
        Vec::new()
    };
    let (mut names, mut selves) = (clients.to_vec(), Vec::new());
    // An alias of an alias: again while the last pass found a new one (bounded by the
    // bindings).
    loop {
        let mut lets = Lets {
            names: &names,
            selves: &selves,
            fields: &fields,
            out: Vec::new(),
        };
        syn::visit::Visit::visit_block(&mut lets, block);
        let before = names.len();
        for (n, is_self) in lets.out {
            if !names.contains(&n) {
                if is_self {
                    selves.push(n.clone());
                }
                names.push(n);
            }
        }
        if names.len() == before {
            return (names, selves);
        }
    }
}

/// `self`, a client parameter, or a field path from one (`self.payments`), no call between.
fn rooted_in(e: &syn::Expr, clients: &[String]) -> bool {
    match e {
        syn::Expr::Path(p) => p
            .path
            .get_ident()
            .is_some_and(|i| clients.iter().any(|c| i == c)),
        syn::Expr::Field(f) => rooted_in(&f.base, clients),
        syn::Expr::Reference(r) => rooted_in(&r.expr, clients),
        syn::Expr::Paren(p) => rooted_in(&p.expr, clients),
        _ => false,
    }
}

/// Whether `receiver`, which an unlisted method is called on, is a helper's value: one a call
/// handed a client parameter made (`follow`, the rule of the caller, with `names` less `self`),
/// or one a helper reached through `self` made ([`self_helper_value`]). The one rule of
/// [`hands_a_client`] and [`helper_future_under`].
fn through_a_helpers_value(
    receiver: &syn::Expr,
    names: &[String],
    follow: impl Fn(&syn::Expr, &[String]) -> bool,
) -> bool {
    follow(receiver, &without_self(names))
        || (names.iter().any(|n| is_self(n)) && self_helper_value(receiver))
}

/// A value a helper reached through `self` makes: a method of `self` itself (`self.place(o)`,
/// `self.orders()`, and what is called on them), or a call handed a field of `self` named for
/// a client (`OrdersApi::new(&self.http)`). Not a value from another field
/// (`self.limiter.clone()`, `Arc::clone(&self.permits)`): as likely no request at all.
fn self_helper_value(e: &syn::Expr) -> bool {
    match e {
        syn::Expr::MethodCall(m) => is_self_path(&m.receiver) || self_helper_value(&m.receiver),
        syn::Expr::Call(call) => call
            .args
            .iter()
            .any(|a| hands_self_a_client(a.to_token_stream(), &[])),
        syn::Expr::Paren(p) => self_helper_value(&p.expr),
        _ => false,
    }
}

/// The fields of `self` that `ts` (a body) builds requests on: `F` in `self.F.post(…)` (any
/// method of a request's), `self.F.request(…)`, `self.F.execute(…)`, also one field down or
/// more (`self.inner.F.post(…)`).
fn self_client_fields(ts: TokenStream) -> Vec<String> {
    fn scan(ts: TokenStream, out: &mut Vec<String>) {
        let tts: Vec<proc_macro2::TokenTree> = ts.into_iter().collect();
        for (i, tt) in tts.iter().enumerate() {
            if let proc_macro2::TokenTree::Group(g) = tt {
                scan(g.stream(), out);
                continue;
            }
            let proc_macro2::TokenTree::Ident(me) = tt else {
                continue;
            };
            if !is_self(&me.to_string()) {
                continue;
            }
            let chain = field_chain(&tts[i + 1..]);
            if let [.., field, m] = &chain[..]
                && [
                    "get", "post", "put", "patch", "delete", "head", "request", "execute",
                ]
                .contains(&m.as_str())
                && !out.contains(field)
            {
                out.push(field.clone());
            }
        }
    }
    let mut out = Vec::new();
    scan(ts, &mut out);
    out
}

/// The names after `self` in `.a.b.c` (`tts` starts after `self`), up to the first that is
/// not followed by another `.name`: a method's name is the last (followed by its arguments).
fn field_chain(tts: &[proc_macro2::TokenTree]) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = tts;
    while let [
        proc_macro2::TokenTree::Punct(dot),
        proc_macro2::TokenTree::Ident(name),
        tail @ ..,
    ] = rest
        && dot.as_char() == '.'
    {
        out.push(name.to_string());
        rest = tail;
    }
    out
}

/// [`field_chain`] without the method called at its end, if one is (`self.registry.for_client(id)`
/// is the field `registry`): the fields alone.
fn fields_only(tts: &[proc_macro2::TokenTree]) -> Vec<String> {
    let mut chain = field_chain(tts);
    // Each name takes two tokens; what follows the last is a method's arguments, or a
    // turbofish.
    let after = tts.get(chain.len() * 2);
    let called = match after {
        Some(proc_macro2::TokenTree::Group(g)) => {
            g.delimiter() == proc_macro2::Delimiter::Parenthesis
        }
        Some(proc_macro2::TokenTree::Punct(p)) => p.as_char() == ':',
        _ => false,
    };
    if called {
        chain.pop();
    }
    chain
}

/// A field (or getter) named for a client: `http`, `client`, `http_client`, `…_client`,
/// `…_http`.
fn named_for_a_client(name: &str) -> bool {
    let lower = name.to_lowercase();
    ["http", "client", "http_client"].contains(&lower.as_str())
        || lower.ends_with("_client")
        || lower.ends_with("_http")
}

/// Whether a macro's input `ts` hands it `self`'s client: `self.F` with `F` one of `fields`
/// (the body builds requests on it) or named for one (`http`, `client`, `…_client`,
/// `…_http`). Not another field (`label!(self.id)`, `self.client_id`: a value formatted or
/// counted sends nothing), nor `self` itself (`my_span!(self)`).
fn hands_self_a_client(ts: TokenStream, fields: &[String]) -> bool {
    let tts: Vec<proc_macro2::TokenTree> = ts.into_iter().collect();
    tts.iter().enumerate().any(|(i, tt)| match tt {
        proc_macro2::TokenTree::Group(g) => hands_self_a_client(g.stream(), fields),
        // One field down or more too (`self.inner.http`): the last field, not one a value is
        // read from (`self.client.poll_interval`) nor a method's name
        // (`self.registry.for_client(id)`); or a getter named for a client (`self.client()`).
        proc_macro2::TokenTree::Ident(me) if is_self(&me.to_string()) => {
            let rest = &tts[i + 1..];
            let chain = field_chain(rest);
            let getter = chain.last().is_some_and(|m| named_for_a_client(m))
                && matches!(rest.get(chain.len() * 2), Some(proc_macro2::TokenTree::Group(g))
                    if g.delimiter() == proc_macro2::Delimiter::Parenthesis && g.stream().is_empty());
            getter
                || fields_only(rest)
                    .last()
                    .is_some_and(|f| fields.contains(f) || named_for_a_client(f))
        }
        _ => false,
    })
}

/// Whether `ts` holds one of `names` as an identifier, at any depth.
fn mentions_any(ts: TokenStream, names: &[String]) -> bool {
    ts.into_iter().any(|tt| match tt {
        proc_macro2::TokenTree::Ident(i) => names.iter().any(|n| i == n),
        proc_macro2::TokenTree::Group(g) => mentions_any(g.stream(), names),
        _ => false,
    })
}

impl VisitMut for Rewriter<'_> {
    fn visit_expr_mut(&mut self, e: &mut syn::Expr) {
        // Inner expressions first, so chains like `a.send().await` nest correctly.
        visit_mut::visit_expr_mut(self, e);
        let p = self.p;
        // Not a call handed a send the rewrite stamps, unawaited
        // (`tokio::time::timeout(d, c.get(u).send())`, `join_all(… .send())`): that request is
        // the call's, seen, and counted before the call starts. A send awaited in its
        // arguments (`store(c, c.get(u).send().await?…)`) ended before it: watched.
        if let syn::Expr::Await(aw) = e
            && !hands_a_send(&aw.base)
            && self.hands_a_client(&aw.base)
        {
            let span = aw.base.span();
            // Without its parentheses, which an argument does not need (`(if … { … }).await`:
            // kept, `unused_parens` would warn at the user's code).
            inside_braces(&mut aw.base, |base| {
                let base = unparenthesized(base);
                syn::parse_quote_spanned!(span=> #p::helper(#base))
            });
            self.found.helpers += 1;
            return;
        }
        // `reqwest::get(url)` (or `reqwest::get::<&str>(url)`): the same one-off GET, sent
        // stamped.
        if let syn::Expr::Call(call) = e
            && call.args.len() == 1
            && let syn::Expr::Path(func) = &*call.func
            && func.qself.is_none()
            && func.path.segments.len() == 2
            && func.path.segments[0].ident == "reqwest"
            && func.path.segments[0].arguments.is_none()
            && func.path.segments[1].ident == "get"
        {
            let span = func.span();
            let args = &func.path.segments[1].arguments;
            *call.func = syn::parse_quote_spanned!(span=> #p::reqwest_get #args);
            self.found.rewritten += 1;
            return;
        }
        // `RequestBuilder::send(rb)` (reqwest's, or reqwest-middleware's): the method call
        // `rb.send()` it is, stamped as one.
        if let syn::Expr::Call(call) = e
            && call.args.len() == 1
            && let syn::Expr::Path(func) = &*call.func
            && func.qself.is_none()
            && let [.., ty, method] = func.path.segments.iter().collect::<Vec<_>>()[..]
            && ty.ident == "RequestBuilder"
            && method.ident == "send"
            && method.arguments.is_none()
        {
            let span = func.span();
            let mut send: syn::ExprMethodCall =
                syn::parse_quote_spanned!(span=> __resilience_rb.send());
            // In place of the placeholder: the printer puts parentheses where needed only.
            *send.receiver = take(&mut call.args[0]);
            *e = syn::Expr::MethodCall(send);
        }
        // `Client::execute(&c, req)` (reqwest's, or reqwest-middleware's): kept as written (the
        // path chooses the method), its request stamped and its outcome observed as
        // `c.execute(req)`'s are, routed by type (another type's `execute` passes through).
        if let syn::Expr::Call(call) = e
            && call.args.len() == 2
            && let syn::Expr::Path(func) = &*call.func
            && func.qself.is_none()
            && let [.., ty, method] = func.path.segments.iter().collect::<Vec<_>>()[..]
            && (ty.ident == "Client" || ty.ident == "ClientWithMiddleware")
            && method.ident == "execute"
            && method.arguments.is_none()
        {
            let span = func.span();
            self.found.rewritten += 1;
            if stamped_argument(p, &mut call.args[1], "Client::execute(&c, req)") {
                let whole = take(e);
                *e = held(p, span, whole, "__resilience_observe");
            }
            return;
        }
        if let syn::Expr::MethodCall(m) = e {
            let name = m.method.to_string();
            if m.turbofish.is_some() {
                return;
            }
            if name == "send" && m.args.is_empty() {
                let span = m.receiver.span();
                let recv = take(&mut m.receiver);
                // A receiver that starts as a read (`tokens.get(u)`, an SDK's `get_object()`):
                // sent through another type than reqwest's, it is no request a key was due on.
                let stamp = if starts_as_a_read(&recv) {
                    "__resilience_stamp_safe"
                } else {
                    "__resilience_stamp"
                };
                // A block, so that the holder is dropped before the `.await` that follows and
                // the body's future stays `Send`.
                *m.receiver = held(p, span, recv, stamp);
                self.found.rewritten += 1;
            } else if name == "execute" && m.args.len() == 1 {
                let span = m.method.span();
                self.found.rewritten += 1;
                if stamped_argument(p, &mut m.args[0], ".execute(req)") {
                    let call = take(e);
                    *e = held(p, span, call, "__resilience_observe");
                }
            }
        }
    }

    fn visit_macro_mut(&mut self, mac: &mut syn::Macro) {
        // Only macros whose input is a comma-separated list of expressions, after an optional
        // `biased;` (`tokio::join!(biased; a, b)`), and `select!` arms; in any other, a request
        // sent goes unseen, and the attempt is taken to have sent the least safe method.
        let (biased, tokens) = split_biased(&mac.tokens);
        let parsed = syn::parse::Parser::parse2(
            Punctuated::<syn::Expr, syn::Token![,]>::parse_terminated,
            tokens,
        );
        if let Ok(mut args) = parsed {
            let before = self.found.changes();
            let joining = mac
                .path
                .segments
                .last()
                .is_some_and(|s| JOINING_MACROS.contains(&s.ident.to_string().as_str()));
            for a in args.iter_mut() {
                self.visit_expr_mut(a);
                if joining && !hands_a_send(a) && self.hands_a_client(a) {
                    let span = a.span();
                    let p = self.p;
                    let arg = take(a);
                    *a = syn::parse_quote_spanned!(span=> #p::helper(#arg));
                    self.found.helpers += 1;
                }
            }
            if self.found.changes() > before {
                let mut out = biased;
                out.extend(args.to_token_stream());
                mac.tokens = out;
            }
            // A macro of the user's own handed the client (`place!(c, order)`,
            // `place!(self.http, order)`): what its expansion sends goes unseen, and its
            // method cannot be inferred from the body. `self` counts too: the macros that
            // mention it to send nothing (an error's text, a log's fields) are the known ones.
            if self.hands_a_client_to(mac) {
                self.found.unreadable_sends = true;
            }
            return;
        }
        // `tokio::select!` and `futures::select!`: `pattern = future (, if cond)? => handler`.
        let is_select = mac
            .path
            .segments
            .last()
            .is_some_and(|s| s.ident == "select" || s.ident == "select_biased");
        if is_select
            && let Ok(mut arms) = syn::parse::Parser::parse2(SelectArms::parse, mac.tokens.clone())
        {
            let before = self.found.changes();
            for (e, future) in arms.exprs_mut() {
                self.visit_expr_mut(e);
                // A helper raced against something else (`r = create_order(c, o) => …`): it
                // may send before it loses, and is watched as an awaited one is.
                if future && !hands_a_send(e) && self.hands_a_client(e) {
                    self.watch_base(e);
                }
            }
            if self.found.changes() > before {
                mac.tokens = arms.into_tokens();
            }
            return;
        }
        // Any other input (`place!(c => order)`, `place!{ client: c, … }`): read as a whole.
        if sends_in(&mac.tokens) || self.hands_a_client_to(mac) {
            self.found.unreadable_sends = true;
        }
    }

    fn visit_block_mut(&mut self, b: &mut syn::Block) {
        visit_mut::visit_block_mut(self, b);
        if self.clients.is_some() {
            self.watch_kept_helpers(&mut b.stmts);
        }
    }

    // Items nested in the body may run outside the attempt: leave them as written. A
    // `macro_rules!` the body defines, though, expands where the body invokes it (`audit!()`,
    // its input naming nothing): a request its rules send goes out unseen, as one inside a
    // macro the rewrite cannot read does.
    fn visit_item_mut(&mut self, item: &mut syn::Item) {
        if let syn::Item::Macro(m) = item
            && (resilience_policy::infer::shows_a_request(m.mac.tokens.clone())
                || self.hands_a_client_to(&m.mac))
        {
            self.found.unreadable_sends = true;
        }
    }
}

/// A macro's input as the rewrite reads it (`visit_macro_mut`): a comma-separated list of
/// expressions after an optional `biased;`, else, for `select!`, its arms; `None` for any other
/// input. For the scans of the body as written.
enum MacroInput {
    List(Punctuated<syn::Expr, syn::Token![,]>),
    Arms(SelectArms),
}

impl MacroInput {
    fn read(mac: &syn::Macro) -> Option<MacroInput> {
        let (_, tokens) = split_biased(&mac.tokens);
        if let Ok(args) = syn::parse::Parser::parse2(
            Punctuated::<syn::Expr, syn::Token![,]>::parse_terminated,
            tokens,
        ) {
            return Some(MacroInput::List(args));
        }
        let select = mac
            .path
            .segments
            .last()
            .is_some_and(|s| s.ident == "select" || s.ident == "select_biased");
        select
            .then(|| syn::parse::Parser::parse2(SelectArms::parse, mac.tokens.clone()).ok())
            .flatten()
            .map(MacroInput::Arms)
    }
}

/// The input of a `select!`: `biased;` first (tokio), then arms `pattern = future
/// (, if condition)? => handler`, each ended by a comma unless its handler is a block, and the
/// `else =>` / `default =>` / `complete =>` arms. Kept as tokens around the expressions, so that
/// the rewritten input is the original with only the expressions changed.
struct SelectArms {
    /// Tokens and expressions in their order.
    parts: Vec<SelectPart>,
}

enum SelectPart {
    Tokens(TokenStream),
    /// An expression, and whether it is an arm's future (not its condition or handler).
    Expr(Box<syn::Expr>, bool),
}

impl SelectArms {
    fn parse(input: syn::parse::ParseStream<'_>) -> syn::Result<SelectArms> {
        let mut parts = Vec::new();
        if input.peek(syn::Ident) && input.peek2(syn::Token![;]) {
            let biased: syn::Ident = input.parse()?;
            let semi: syn::Token![;] = input.parse()?;
            parts.push(SelectPart::Tokens(quote!(#biased #semi)));
        }
        while !input.is_empty() {
            let fallback = input.peek2(syn::Token![=>])
                && (input.peek(syn::Token![else])
                    || input
                        .fork()
                        .parse::<syn::Ident>()
                        .is_ok_and(|i| i == "default" || i == "complete"));
            if fallback {
                let word: TokenStream = if input.peek(syn::Token![else]) {
                    input.parse::<syn::Token![else]>()?.to_token_stream()
                } else {
                    input.parse::<syn::Ident>()?.to_token_stream()
                };
                parts.push(SelectPart::Tokens(word));
            } else {
                let pat = syn::Pat::parse_multi_with_leading_vert(input)?;
                let eq: syn::Token![=] = input.parse()?;
                parts.push(SelectPart::Tokens(quote!(#pat #eq)));
                parts.push(SelectPart::Expr(Box::new(input.parse()?), true));
                if input.peek(syn::Token![,]) && input.peek2(syn::Token![if]) {
                    let comma: syn::Token![,] = input.parse()?;
                    let if_: syn::Token![if] = input.parse()?;
                    parts.push(SelectPart::Tokens(quote!(#comma #if_)));
                    parts.push(SelectPart::Expr(Box::new(input.parse()?), false));
                }
            }
            let arrow: syn::Token![=>] = input.parse()?;
            parts.push(SelectPart::Tokens(arrow.to_token_stream()));
            // A handler that begins with a block is that block, as tokio's own rules read it:
            // read as an expression, `{ … } () = stop.notified() => …` would be a call of the
            // block assigned to, and the whole `select!` left unread.
            // Unless the block goes on as an expression (`=> { fut }.await,`, `=> { r }?,`,
            // which `futures::select!` reads as one).
            let fork = input.fork();
            let block_alone = fork.peek(syn::token::Brace)
                && fork.parse::<syn::Block>().is_ok()
                && !fork.peek(syn::Token![.])
                && !fork.peek(syn::Token![?]);
            let handler: syn::Expr = if block_alone {
                syn::Expr::Block(syn::ExprBlock {
                    attrs: Vec::new(),
                    label: None,
                    block: input.parse()?,
                })
            } else {
                input.parse()?
            };
            let block = matches!(handler, syn::Expr::Block(_));
            parts.push(SelectPart::Expr(Box::new(handler), false));
            if input.peek(syn::Token![,]) {
                let comma: syn::Token![,] = input.parse()?;
                parts.push(SelectPart::Tokens(comma.to_token_stream()));
            } else if !block && !input.is_empty() {
                return Err(input.error("expected `,` after a select! arm"));
            }
        }
        Ok(SelectArms { parts })
    }

    /// The expressions, each with whether it is an arm's future.
    fn exprs(&self) -> impl Iterator<Item = (&syn::Expr, bool)> {
        self.parts.iter().filter_map(|p| match p {
            SelectPart::Expr(e, future) => Some((&**e, *future)),
            SelectPart::Tokens(_) => None,
        })
    }

    /// The expressions, each with whether it is an arm's future.
    fn exprs_mut(&mut self) -> impl Iterator<Item = (&mut syn::Expr, bool)> {
        self.parts.iter_mut().filter_map(|p| match p {
            SelectPart::Expr(e, future) => Some((&mut **e, *future)),
            SelectPart::Tokens(_) => None,
        })
    }

    fn into_tokens(self) -> TokenStream {
        self.parts
            .into_iter()
            .map(|p| match p {
                SelectPart::Tokens(t) => t,
                SelectPart::Expr(e, _) => e.to_token_stream(),
            })
            .collect()
    }
}

/// Writes the raw names of the calls the rewrite routes (`rb.r#send()`, `c.r#execute(req)`)
/// as the plain ones: the same methods. No other name is touched (`rng.r#gen()` stays raw:
/// `gen` is reserved in the 2024 edition).
struct Unraw;

impl syn::visit_mut::VisitMut for Unraw {
    fn visit_expr_method_call_mut(&mut self, m: &mut syn::ExprMethodCall) {
        let name = m.method.to_string();
        if let Some(plain @ ("send" | "execute")) = name.strip_prefix("r#") {
            m.method = syn::Ident::new(plain, m.method.span());
        }
        syn::visit_mut::visit_expr_method_call_mut(self, m);
    }
}

/// A leading `biased;` (tokio's `join!`, `try_join!` and `select!`), and the tokens after it.
fn split_biased(tokens: &TokenStream) -> (TokenStream, TokenStream) {
    let mut it = tokens.clone().into_iter();
    if let (Some(proc_macro2::TokenTree::Ident(b)), Some(proc_macro2::TokenTree::Punct(semi))) =
        (it.next(), it.next())
        && b == "biased"
        && semi.as_char() == ';'
    {
        let head = quote!(#b #semi);
        return (head, it.collect());
    }
    (TokenStream::new(), tokens.clone())
}

/// Whether `tokens` hold `. send (` or `. execute (`, at any depth: what a request sent inside a
/// macro looks like.
fn sends_in(tokens: &TokenStream) -> bool {
    let trees: Vec<_> = tokens.clone().into_iter().collect();
    trees.windows(3).any(|w| match w {
        [
            proc_macro2::TokenTree::Punct(dot),
            proc_macro2::TokenTree::Ident(name),
            proc_macro2::TokenTree::Group(g),
        ] => {
            dot.as_char() == '.'
                && (name == "send" || name == "execute")
                && g.delimiter() == proc_macro2::Delimiter::Parenthesis
        }
        _ => false,
    }) || trees.iter().any(|t| match t {
        proc_macro2::TokenTree::Group(g) => sends_in(&g.stream()),
        _ => false,
    })
}

/// `execute`'s request argument, stamped where it is made (routed by its type: another type's
/// argument passes through); `false`, and a compile error in its place, for a conversion whose
/// target only `execute`'s parameter names (`req.try_into()?`, `req.into()`): routed by its
/// type, the argument has none to be inferred, and the compiler's error would name this
/// crate's own types. Said here, with the way out (`then` the call as the user writes it).
fn stamped_argument(p: &TokenStream, arg: &mut syn::Expr, then: &str) -> bool {
    let span = arg.span();
    if converted_without_a_type(arg) {
        let message = format!(
            "#[resilient] routes `execute`'s argument by its type, which this conversion leaves to be inferred from `execute`\nhelp: convert it first, with its type written: `let req: reqwest::Request = req.try_into()?;`, then `{then}`"
        );
        *arg = syn::parse_quote_spanned!(span=> ::core::compile_error!(#message));
        return false;
    }
    let held_arg = take(arg);
    *arg = held(p, span, held_arg, "__resilience_stamp_arg");
    true
}

/// Moves an expression out, leaving an empty placeholder that is overwritten at once.
fn take(e: &mut syn::Expr) -> syn::Expr {
    std::mem::replace(e, syn::Expr::Verbatim(TokenStream::new()))
}

/// `match P::Stampable::new(expr) { __resilience_sent => (&&__resilience_sent).method() }`,
/// spanned at `span`, with the user's expression moved in as it is: built as syntax, not printed
/// and parsed again (a body's chains would otherwise be re-parsed once per `.send()`). A
/// `match`, not a block with a `let`: the temporaries of `expr` (`&n.to_string()` in a query
/// builder's chain) then live to the end of the user's statement, as they did unwritten.
/// Whether `arg` is a conversion whose target type is left to be inferred from where it is
/// handed: `x.try_into()`, `x.into()`, with or without `?`.
fn converted_without_a_type(arg: &syn::Expr) -> bool {
    let mut e = arg;
    while let syn::Expr::Try(t) = e {
        e = &t.expr;
    }
    matches!(e, syn::Expr::MethodCall(m)
        if m.args.is_empty()
            && m.turbofish.is_none()
            && (m.method == "try_into" || m.method == "into"))
}

fn held(p: &TokenStream, span: proc_macro2::Span, expr: syn::Expr, method: &str) -> syn::Expr {
    // A parenthesized receiver (`(&outbox).send()`, the way to send through a borrow) goes in
    // without its parentheses, which an argument does not need: kept, `unused_parens` would
    // warn at the user's code, an error under `#![deny(warnings)]`.
    let mut expr = unparenthesized(expr);
    // A block of one expression (`{ c.post(u).json(&*state.read()?) }.send()`): stamped inside
    // its braces, which stay (see `inside_braces`).
    if one_expression(&expr) {
        inside_braces(&mut expr, |inner| held(p, span, inner, method));
        return expr;
    }
    let method = syn::Ident::new(method, span);
    let mut held: syn::ExprMatch = syn::parse_quote_spanned! {span=>
        match #p::Stampable::new(()) {
            __resilience_sent => (&&__resilience_sent).#method(),
        }
    };
    if let syn::Expr::Call(call) = &mut *held.expr
        && let Some(arg) = call.args.first_mut()
    {
        *arg = expr;
    }
    syn::Expr::Match(held)
}

/// `e` without the parentheses around it, which an argument does not need (kept,
/// `unused_parens` would warn at the user's code, an error under `#![deny(warnings)]`).
fn unparenthesized(mut e: syn::Expr) -> syn::Expr {
    while let syn::Expr::Paren(inner) = e {
        e = *inner.expr;
    }
    e
}

/// Replaces `e` with `f(e)`, inside the braces of a block of one expression (`{
/// create_order(c, o) }`), and so on inward: the braces stay, so their temporaries are dropped
/// at the block's end, as written (edition 2024: a lock's guard taken there is not held across
/// the `.await` after it), and the wrap's argument has no braces for `unused_braces` to warn
/// of.
fn inside_braces(e: &mut syn::Expr, f: impl FnOnce(syn::Expr) -> syn::Expr) {
    // `({ create_order(c, o) }).await`: through the parentheses too, which stay (the user's
    // own, as the braces).
    if let syn::Expr::Paren(p) = e
        && one_expression(&p.expr)
    {
        return inside_braces(&mut p.expr, f);
    }
    if one_expression(e) {
        if let syn::Expr::Block(b) = e
            && let Some(syn::Stmt::Expr(inner, None)) = b.block.stmts.first_mut()
        {
            inside_braces(inner, f);
        }
        return;
    }
    let value = take(e);
    *e = f(value);
}

/// Whether `e` is a block of one expression, without attributes or a label.
fn one_expression(e: &syn::Expr) -> bool {
    matches!(e, syn::Expr::Block(b)
        if b.attrs.is_empty()
            && b.label.is_none()
            && matches!(&b.block.stmts[..], [syn::Stmt::Expr(_, None)]))
}

/// The `use` that brings the dispatch traits into the body's scope.
pub(crate) fn prelude(p: &TokenStream) -> TokenStream {
    quote! {
        #[allow(unused_imports)]
        use #p::{ObserveFuture as _, PassThrough as _, SendRequest as _, StampArg as _};
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rw(ts: TokenStream) -> (String, usize) {
        let mut b: syn::Block = syn::parse2(ts).unwrap();
        let f = rewrite(&mut b, &quote!(P), None);
        (
            b.to_token_stream().to_string().replace(' ', ""),
            f.rewritten,
        )
    }

    #[test]
    fn sends_written_as_paths_are_routed() {
        let (s, n) = rw(quote!({ reqwest::RequestBuilder::send(c.post(u)).await? }));
        assert_eq!(n, 1);
        assert!(s.contains("__resilience_stamp()"), "{s}");
        assert!(s.contains(".send().await?"), "{s}");
        let (s, n) = rw(quote!({ RequestBuilder::send(rb).await? }));
        assert_eq!(n, 1, "{s}");
        let (s, n) = rw(quote!({ reqwest::get::<&str>(u).await? }));
        assert_eq!(n, 1);
        assert!(s.contains("P::reqwest_get::<&str>(u).await"), "{s}");
        // Not a builder's send.
        let (_, n) = rw(quote!({ Sender::send(tx, v) }));
        assert_eq!(n, 0);
    }

    #[test]
    fn sends_and_executes_are_routed() {
        let (s, n) = rw(quote!({ c.get(u).send().await?.error_for_status()? }));
        assert_eq!(n, 1);
        assert!(
            s.contains("matchP::Stampable::new(c.get(u)){__resilience_sent=>(&&__resilience_sent).__resilience_stamp_safe(),}.send().await"),
            "{s}"
        );
        // A receiver showing no safe method: what another type's send of it sent may need
        // the key.
        for ts in [
            quote!({ c.post(u).send().await? }),
            quote!({ rb.send().await? }),
            quote!({ sdk.put_object().send().await? }),
            quote!({
                sqs.send_message()
                    .queue_url(cfg.queues.get("orders"))
                    .send()
                    .await?
            }),
            quote!({ c.request(Method::POST, u).send().await? }),
        ] {
            let (s, n) = rw(ts);
            assert_eq!(n, 1, "{s}");
            assert!(s.contains(".__resilience_stamp(),"), "{s}");
        }
        // A chain that starts with a read, an SDK's too.
        for ts in [
            quote!({ c.get(u).header("x", c.post(v)).send().await? }),
            quote!({ s3.get_object().bucket(b).key(k).send().await? }),
            quote!({ secrets.get_secret_value().secret_id(id).send().await? }),
            quote!({ dynamo.query().table_name(t).send().await? }),
            quote!({ c.request(Method::HEAD, u).send().await? }),
        ] {
            let (s, n) = rw(ts);
            assert_eq!(n, 1, "{s}");
            assert!(s.contains(".__resilience_stamp_safe(),"), "{s}");
        }
        let (s, n) = rw(quote!({ c.execute(req).await }));
        assert_eq!(n, 1);
        assert!(s.contains("__resilience_stamp_arg()"), "{s}");
        assert!(s.contains("__resilience_observe()"), "{s}");
        // Any one-argument `execute`: a reqwest client may be reached any way.
        assert_eq!(rw(quote!({ self.client().execute(req).await })).1, 1);
        assert_eq!(rw(quote!({ api.execute(req).await })).1, 1);
        let (s, n) = rw(quote!({ reqwest::get(u).await?.text().await }));
        assert_eq!(n, 1);
        assert!(s.contains("P::reqwest_get(u).await"), "{s}");
        let (_, n) = rw(quote!({ tokio::join!(a.send(), b.send()) }));
        assert_eq!(n, 2);
        let (_, n) = rw(quote!({
            let f = |x| async move { x.send().await };
        }));
        assert_eq!(n, 1);
    }

    /// Which awaited calls are watched as helpers handed the client (`c` and `self` here).
    #[test]
    fn helpers_handed_the_client_are_watched() {
        let watched = |ts: TokenStream| {
            let mut b: syn::Block = syn::parse2(ts).unwrap();
            let clients = ["c".to_owned(), "self".to_owned()];
            rewrite(&mut b, &quote!(P), Some(&clients)).helpers
        };
        assert_eq!(watched(quote!({ create_order(c, &o).await? })), 1);
        assert_eq!(watched(quote!({ recs(&self.http, id).await })), 1);
        assert_eq!(watched(quote!({ self.place(o).await })), 1);
        assert_eq!(watched(quote!({ self.payments.charge(o).await })), 1);
        assert_eq!(watched(quote!({ c.fetch_json(u).await })), 1);
        // Seen sends, and awaits that hand no client on.
        assert_eq!(watched(quote!({ c.get(u).send().await?.json().await? })), 0);
        assert_eq!(
            watched(quote!({ self.http.get(u).send().await?.text().await? })),
            0
        );
        assert_eq!(watched(quote!({ c.execute(req).await })), 0);
        assert_eq!(watched(quote!({ tokio::time::sleep(d).await })), 0);
        assert_eq!(watched(quote!({ resp.json().await })), 0);
        assert_eq!(watched(quote!({ other.place(o).await })), 0);
        // Handed the client under another name.
        for ts in [
            quote!({
                let (c2, s) = (c.clone(), sku.to_owned());
                reserve(&c2, &s).await
            }),
            quote!({
                let c2 = Arc::clone(&c);
                let c3 = c2.clone();
                reserve(c3, s).await
            }),
            quote!({
                let this = &mut *self;
                this.place(o).await
            }),
            quote!({
                let http = &self.http;
                create_order(http, &o).await
            }),
            quote!({
                let Self { http, .. } = self;
                create_order(http, &o).await
            }),
            quote!({
                if let Some(h) = &self.orders_client {
                    create_order(h, &o).await
                }
            }),
        ] {
            assert_eq!(watched(ts.clone()), 1, "{ts}");
        }
        // Not a client under another name: a value from another field, a response.
        for ts in [
            quote!({
                let rates = &self.rates;
                price(rates, o).await
            }),
            quote!({
                let r = c.get(u).send().await?;
                read(r).await
            }),
        ] {
            assert_eq!(watched(ts.clone()), 0, "{ts}");
        }
        // Raced in `select!`, watched under its adapters.
        let mut b: syn::Block = syn::parse2(quote!({
            futures::select! {
                r = create_order(c, o).fuse() => r,
                _ = t => 0,
            }
        }))
        .unwrap();
        let clients = ["c".to_owned()];
        assert_eq!(rewrite(&mut b, &quote!(P), Some(&clients)).helpers, 1);
        let s = b.to_token_stream().to_string().replace(' ', "");
        assert!(
            s.contains("r=P::helper(create_order(c,o)).fuse()=>r"),
            "{s}"
        );
        // Kept in a variable and polled later: watched where it is made.
        assert_eq!(
            watched(quote!({
                let fut = create_order(c, o);
                let s = c.get(u).send().await?;
                fut.await?
            })),
            1
        );
        assert_eq!(
            watched(quote!({
                let mut order = self.place(o).boxed();
                tokio::pin!(order);
                tokio::select! {
                    r = &mut order => r,
                    _ = sleep(d) => order.await,
                }
            })),
            1
        );
        assert_eq!(
            watched(quote!({
                let order = create_order(c, o);
                tokio::time::timeout(d, order).await??
            })),
            1
        );
        assert_eq!(
            watched(quote!({
                let a = charge(c, x);
                let b = charge(c, y);
                let (a, b) = tokio::try_join!(a, b)?;
                a.status()
            })),
            2
        );
        // Not kept as a future: a builder, a value, a typed binding, a use other than polling.
        for ts in [
            quote!({
                let req = c.post(u);
                req.send().await
            }),
            quote!({
                let n = self.items.len();
                n + 1
            }),
            quote!({
                let fut: BoxFuture<'_, R> = charge(c, x);
                fut.await
            }),
            quote!({
                let b = self.charge(o);
                b.with_key(k).await
            }),
            quote!({
                let b = self.charge(o);
                run(b).await
            }),
            quote!({
                let b = charge(c, o);
                my_macro!(b).await
            }),
        ] {
            assert_eq!(watched(ts.clone()), 0, "{ts}");
        }
        // With the method declared, nothing is watched.
        let mut b: syn::Block = syn::parse2(quote!({ create_order(c, &o).await })).unwrap();
        assert_eq!(rewrite(&mut b, &quote!(P), None).helpers, 0);
    }

    #[test]
    fn select_arms_are_routed() {
        let (s, n) = rw(quote!({
            tokio::select! {
                biased;
                r = c.get(u).send() => r?,
                _ = stop.changed(), if armed => { c.post(v).send().await? }
                else => return Ok(()),
            }
        }));
        assert_eq!(n, 2, "{s}");
        assert!(s.contains("biased;r="), "{s}");
        assert!(s.contains(",ifarmed=>"), "{s}");
        let (_, n) = rw(quote!({
            futures::select! {
                r = a.send().fuse() => r,
                complete => 0,
                default => 1,
            }
        }));
        assert_eq!(n, 1);
        // A select! whose input does not parse as arms is left as it was.
        let (_, n) = rw(quote!({
            tokio::select! { r = a.send() => }
        }));
        assert_eq!(n, 0);
        // A block handler with no comma after it, followed by an arm whose pattern begins with
        // `(`, `[` or `&`: the block ends the handler.
        let (s, n) = rw(quote!({
            tokio::select! {
                r = c.get(u).send() => { r? }
                () = stop.notified() => {}
                (a, b) = c.get(v).send().zip(x) => a,
                [x] = c.get(w).send() => { x }
                &y = c.get(z).send() => y,
            }
        }));
        assert_eq!(n, 4, "{s}");
        // A block that goes on as an expression, as `futures::select!` reads it.
        let (s, n) = rw(quote!({
            futures::select! {
                r = c.get(u).send().fuse() => { r }?,
                s = c.get(v).send().fuse() => { other(s) }.await,
            }
        }));
        assert_eq!(n, 2, "{s}");
    }

    /// Which bodies send their unsafe requests only where the runtime sees them.
    #[test]
    fn sends_seen_are_proven_only_from_the_bodys_own_send_chains() {
        let seen = |ts: TokenStream| {
            let b: syn::Block = syn::parse2(ts).unwrap();
            sends_all_seen(&b, &["c".to_owned()])
        };
        for ts in [
            quote!({
                let t = c.get(token).send().await?.text().await?;
                c.post(pg).bearer_auth(t).json(o).send().await?.json().await
            }),
            quote!({
                let r = c.request(Method::POST, u).send().await?;
                tokio::try_join!(c.delete(a).send(), c.get(b).send())?;
            }),
            quote!({
                tokio::select! {
                    r = c.patch(u).send() => r,
                    _ = sleep(d) => Err(e),
                }
            }),
        ] {
            assert!(seen(ts.clone()), "{ts}");
        }
        for ts in [
            // Built into a variable, or sent with `execute`.
            quote!({
                let rb = c.post(u).json(o);
                rb.send().await
            }),
            quote!({
                let req = c.post(u).build()?;
                c.execute(req).await
            }),
            // In a closure or an `async` block: may run in a spawned task.
            quote!({
                tokio::spawn(async move { c2.post(u).send().await });
                c.get(s).send().await
            }),
            quote!({ join_all(os.iter().map(|o| c.post(u).json(o).send())).await }),
            // A helper handed the client, or the builder.
            quote!({
                audit(c, o).await?;
                c.post(u).send().await
            }),
            quote!({ send_it(CLIENT.post(u)).await }),
            // A macro the rewrite cannot read.
            quote!({ my_send!(c.post(u)) }),
        ] {
            assert!(!seen(ts.clone()), "{ts}");
        }
    }

    /// Which bodies hand a helper's future where the rewrite cannot watch it (`c` and `self`
    /// the clients here).
    #[test]
    fn helpers_the_rewrite_cannot_watch_are_found() {
        let unwatched = |ts: TokenStream| {
            let mut b: syn::Block = syn::parse2(ts).unwrap();
            let clients = ["c".to_owned(), "self".to_owned()];
            rewrite(&mut b, &quote!(P), Some(&clients)).unwatched_helpers
        };
        for ts in [
            // Made in a closure, collected for a `join_all` or a stream.
            quote!({
                let futs: Vec<_> = ids.iter().map(|id| create_order(c, id)).collect();
                join_all(futs).await;
            }),
            quote!({
                let s = stream::iter(ids).map(|id| create_order(c, id).boxed());
            }),
            quote!({
                let futs = ids.iter().map(|id| Box::pin(create_order(c, id)));
            }),
            // Handed to a collection or a spawner.
            quote!({
                set.push(create_order(c, o));
            }),
            quote!({
                set.push(Box::pin(place(&self.http, o)));
            }),
            quote!({
                tokio::spawn(create_order(c.clone(), o));
            }),
            quote!({
                tokio::spawn(place(self.http.clone(), o));
            }),
            quote!({
                let v = vec![create_order(c, a), create_order(c, b)];
            }),
            quote!({
                let v = [create_order(c, a), create_order(c, b)];
            }),
            // Kept, and handed on or typed.
            quote!({
                let f = create_order(c, o);
                futs.push(f);
            }),
            quote!({
                let f = create_order(c, o);
                join_all(vec![f]).await;
            }),
            quote!({
                let f: BoxFuture<'_, R> = create_order(c, o).boxed();
                f.await?;
            }),
            quote!({
                let f = create_order(c, o);
                tokio::spawn(async move { f.await });
            }),
            quote!({
                let f = create_order(c, o);
                set.spawn(async move { f.await });
            }),
            // The same inside a `select!` arm's handler or condition, or a `join!`'s future.
            quote!({
                tokio::select! {
                    biased;
                    r = c.get(u).send() => { tokio::spawn(create_order(c.clone(), o)); }
                    _ = tick.tick() => set.push(create_order(c, o)),
                }
            }),
            quote!({
                futures::select! {
                    r = stock.fuse() => {
                        let f = create_order(c, o);
                        futs.push(f);
                    },
                    complete => (),
                }
            }),
            quote!({
                tokio::join!(biased; async { tasks.spawn(create_order(c.clone(), o)); }, b);
            }),
            quote!({
                let v = vec![async { set.push(create_order(c, o)) }];
            }),
            // Awaited, or sent unsafe, in a task of its own: outside the attempt.
            quote!({
                let c = c.clone();
                tokio::spawn(async move {
                    if let Err(e) = reserve(&c, &s).await {
                        tracing::warn!(%e);
                    }
                });
            }),
            quote!({
                set.spawn(async move { self.audit(o).await });
            }),
            quote!({
                let c2 = c.clone();
                tokio::spawn(async move { c2.post(audit).send().await });
            }),
            quote!({
                tokio::task::spawn_blocking(move || rt.block_on(async { c.post(u).send().await }));
            }),
            quote!({
                let c2 = c.clone();
                tokio::spawn(async move { reserve(&c2, &s).await }.instrument(span));
            }),
            quote!({
                let this = &mut *self;
                tokio::spawn(Box::pin(async move { this.place(o).await }));
            }),
            quote!({
                let c2 = c.clone();
                let task = async move { reserve(&c2, &s).await };
                tokio::spawn(task);
            }),
        ] {
            assert!(unwatched(ts.clone()), "{ts}");
        }
        for ts in [
            // Awaited, joined, raced, kept and awaited: watched.
            quote!({ create_order(c, o).await? }),
            quote!({ join_all(ids.iter().map(|id| create_order(c, id))).await }),
            quote!({ join_all([create_order(c, a), create_order(c, b)]).await }),
            quote!({
                let f = create_order(c, o);
                f.await
            }),
            quote!({ tokio::join!(create_order(c, a), c.get(u).send()) }),
            quote!({ tokio::try_join!(biased; create_order(c, a).boxed(), place(&self.http, o)) }),
            quote!({
                tokio::select! {
                    r = create_order(c, o) => r,
                    _ = sleep(d) => { join_all([create_order(c, a)]).await; }
                }
            }),
            // Macros that compute: a value from `self`, a builder.
            quote!({ tracing::info!(sku = %self.sku(id), "ordering") }),
            quote!({
                let v = vec![url_for(&self.base, a), url_for(&self.base, b)];
            }),
            quote!({
                let v = vec![c.get(a), c.get(b)];
            }),
            quote!({
                let fs = ids
                    .iter()
                    .map(|id| async move { create_order(c, id).await? });
            }),
            // A builder a helper made, sent: seen.
            quote!({
                let rs = us.iter().map(|u| authed(c, u).send());
            }),
            quote!({
                let rb: RequestBuilder = authed(c, u);
                rb.send().await
            }),
            // Requests the rewrite stamps, handed on.
            quote!({
                set.push(c.get(u).send());
            }),
            quote!({ tokio::time::timeout(d, c.get(u).send()).await }),
            // A closure handed `self` computes as likely as it sends.
            quote!({
                let ps = os.iter().map(|o| price(&self.rates, o));
            }),
            // Handed no client.
            quote!({
                set.push(other(o));
            }),
            // Handed `self` and kept as it is: as likely a value.
            quote!({
                urls.push(url_for(&self.base, id));
            }),
            // Kept values that are not a helper's future, handed on.
            quote!({
                let u = url_for(&self.base, id);
                urls.push(u);
            }),
            quote!({
                let s = self.sku(id);
                q.push(s);
            }),
            quote!({
                let c2 = c.clone();
                tokio::spawn(async move { c2.get(u).send().await });
            }),
            // A task that sends nothing the body shows: a query, a field's job.
            quote!({
                tokio::spawn(async move { sqlx::query(q).execute(&pool).await });
            }),
            quote!({
                let this = self.clone();
                tokio::spawn(async move { this.cache.invalidate(&k).await });
            }),
            // `self` under another name keeps the rules of `self`.
            quote!({
                let this = &mut *self;
                let ps = os.iter().map(|o| price(&this.rates, o));
            }),
            quote!({
                let this = &mut *self;
                let p = Arc::clone(&this.permits).acquire_owned().await;
            }),
            // A kept join the rewrite watches as a whole.
            quote!({
                let all = join_all(ids.iter().map(|id| create_order(c, id)));
                all.await
            }),
            quote!({
                let v = vec![url_for(&self.base, a)];
            }),
            quote!({
                let v = ids.iter().map(|id| id + 1);
            }),
        ] {
            assert!(!unwatched(ts.clone()), "{ts}");
        }
    }

    #[test]
    fn other_shapes_are_left_alone() {
        for ts in [
            quote!({ tx.send(v).await }),
            quote!({ s.send::<u8>() }),
            quote!({
                fn helper(b: B) {
                    b.send();
                }
            }),
            quote!({ x.execute(a, b) }),
            quote!({ other::get(u) }),
        ] {
            assert_eq!(rw(ts.clone()).1, 0, "{ts}");
        }
    }
}
