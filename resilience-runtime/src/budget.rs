//! Retry budget: over a sliding window, retries may add at most `ratio` of first attempts, plus a
//! floor per second so that a quiet client can still retry.
//!
//! Every first attempt deposits `ratio` of a retry; a retry is granted from the floor while the
//! current second has some left (`min_per_sec`), else withdrawn from the deposits. Deposits and
//! withdrawals expire after [`Budget::WINDOW`]. So over any window of `W` seconds (a deposit
//! pays for a retry up to one window later),
//!
//! ```text
//! retries ≤ ratio × first attempts (in that window and the one before) + min_per_sec × W
//! ```
//!
//! and a dead downstream under steady load sees about `1 + ratio` times its normal load (plus
//! the floor), not `max_attempts` times. This is the accounting of tower's `TpsBudget`, except
//! that the floor is granted per second rather than as one reserve for the whole window: a
//! client that was idle cannot spend ten seconds' worth of floor in one burst on a downstream
//! that just fell over.
//!
//! # Retries of requests that were never processed
//!
//! A connect failure (never sent), or a pooled connection found closed (the reset class: a
//! burst of stale keep-alive sockets after an idle spell), costs the downstream nothing or
//! next to nothing, and is the safest retry there is. Such a burst can be larger than the floor
//! and the deposits allow: 24 stale sockets at once against a floor of 10 per second. So these
//! retries, when the budget proper refuses them, draw on a separate allowance of
//! [`Budget::UNPROCESSED_BURST`] per window ([`Budget::withdraw_retry_at`]). The storm stays
//! bounded: over each of the budget's fixed 10-second windows (counted from its creation; the
//! floor counts whole seconds),
//!
//! ```text
//! retries ≤ ratio × first attempts + min_per_sec × W + UNPROCESSED_BURST
//! ```
//!
//! (a span of W seconds that straddles two windows, or W + 1 whole seconds, can hold up to two
//! allowances and one more second's floor), and a retry storm against a dead downstream that answers (503, timeouts) never touches the
//! allowance at all.
//!
//! # A retry never made
//!
//! A call takes its retry when it decides on it, before the backoff. If the retry is then never
//! made (its breaker opened during the backoff, the deadline came first, its caller stopped
//! waiting), the retry goes back where it came from: the second's floor, the deposits' bucket,
//! or the window's allowance, unless that second, bucket or window has passed (its passing
//! already gave it back).
//!
//! # Deposits batched per thread
//!
//! The budgets the runtime keeps for annotated functions take their first attempts in batches
//! per thread: up to eight made in the same second, recorded in that second's bucket
//! together, so that calls on many threads do not all write the same two words. A thread
//! holds back at most seven first attempts of a budget (0.7 of a retry at the default 10%)
//! until it calls again, withdraws from it, reads it or ends; a batch recorded late counts
//! from the second it was made, or not at all once that second has left the window. So the
//! bounds above hold as written, and the budget is at most that much stricter for a while.
//! [`Budget::deposit`], for a budget used by hand, records each at once.
//!
//! # How it stays exact without a lock
//!
//! The window is [`Budget::BUCKETS`] buckets of one second. `balance` holds what deposits can
//! still pay for: the net of every live bucket. A withdrawal is a compare-and-swap on `balance`
//! that never lets it go below zero, so no two callers can spend the same retry. Each bucket is
//! one `AtomicU64` packing the epoch (second) it belongs to and its net; when the clock passes
//! into a new second, whoever gets there first recycles the buckets that fell out of the window
//! (a compare-and-swap on the bucket, so each one is recycled once) and takes their net back out
//! of `balance`. The floor is one more `AtomicU64` packing a second and the retries granted in
//! it. Every race left resolves on the safe side: a deposit may count a moment late, a
//! withdrawal a moment long, never the other way round.

use std::cell::Cell;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::invalid::InvalidPolicy;

/// Settings of a retry budget (`[budgets.NAME]`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetSpec {
    /// Retries may add at most this share of first attempts (0.1 = 10%): 0, or 0.001 to 1,
    /// counted in thousandths rounded down.
    pub ratio: f64,
    /// Retries always allowed in each second, whatever the deposits, so a quiet client can
    /// still retry. At most [`BudgetSpec::MAX_MIN_PER_SEC`].
    pub min_per_sec: u32,
}

impl BudgetSpec {
    /// 10% of first attempts plus 10 retries per second.
    pub const DEFAULT: BudgetSpec = BudgetSpec {
        ratio: resilience_spec::defaults::BUDGET_RATIO,
        min_per_sec: resilience_spec::defaults::BUDGET_MIN_PER_SEC,
    };

    /// The largest `ratio`: retries may at most double the first attempts.
    pub const MAX_RATIO: f64 = *resilience_spec::bounds::BUDGET_RATIO.end();

    /// The largest `min_per_sec`.
    pub const MAX_MIN_PER_SEC: u32 = resilience_spec::bounds::BUDGET_MIN_PER_SEC_MAX;

    /// Checks the ranges documented on each field.
    pub fn validate(&self) -> Result<(), InvalidPolicy> {
        use resilience_spec::rules;
        rules::budget_ratio(self.ratio).map_err(|b| InvalidPolicy(b.to_string()))?;
        rules::budget_min_per_sec(u64::from(self.min_per_sec))
            .map_err(|b| InvalidPolicy(b.to_string()))
    }
}

impl Default for BudgetSpec {
    fn default() -> Self {
        BudgetSpec::DEFAULT
    }
}

/// One retry, in the fixed-point units the budget counts in (a deposit of ratio 0.1 is 100).
const UNIT: i64 = 1000;
const BUCKETS: usize = 10;
const BUCKET_SECS: u64 = 1;

/// A bucket: the epoch it holds (high 32 bits) and its net in units (low 32 bits, signed).
fn pack(epoch: u32, net: i32) -> u64 {
    (u64::from(epoch) << 32) | u64::from(net as u32)
}

fn epoch_of(slot: u64) -> u32 {
    (slot >> 32) as u32
}

fn net_of(slot: u64) -> i32 {
    slot as u32 as i32
}

/// Where a granted retry came from: the second of the floor, the bucket (epoch) that recorded
/// it, or the window of the allowance for unprocessed requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Token {
    Floor(u64),
    Balance(u64),
    Unprocessed(u64),
}

/// A thread's first attempts for one budget, made in `epoch` and not yet recorded
/// ([`Budget::deposit_batched`]).
#[derive(Debug, Clone, Copy)]
struct Batch {
    budget: &'static Budget,
    epoch: u64,
    count: u32,
}

/// First attempts a thread batches, per budget, before it records them: 7 held back at most,
/// less than one retry at the default 10%.
const BATCH: u32 = 8;

/// Slots of a thread's batches: a budget takes the one its address maps to.
const BATCH_SLOTS: usize = 4;

/// A thread's batches; recorded when the thread ends (a thread made for one call, or a pool's
/// thread let go, loses none).
struct Batches([Cell<Option<Batch>>; BATCH_SLOTS]);

impl Drop for Batches {
    fn drop(&mut self) {
        for slot in &self.0 {
            if let Some(p) = slot.take() {
                p.budget.add_deposits(p.epoch, p.count);
            }
        }
    }
}

thread_local! {
    static BATCHES: Batches = const { Batches([const { Cell::new(None) }; BATCH_SLOTS]) };
}

fn batch_slot(b: &Budget) -> usize {
    // A budget is aligned to 128 bytes (its striped count): the bits above those.
    (std::ptr::from_ref(b) as usize >> 7) % BATCH_SLOTS
}

/// Adds `units` to the net of a bucket word that still holds `cur`: false when another caller
/// changed it first, `None` when the net would overflow.
#[inline]
fn add_to(bucket: &AtomicU64, cur: u64, units: i32) -> Option<bool> {
    let net = net_of(cur).checked_add(units)?;
    let next = pack(epoch_of(cur), net);
    Some(
        bucket
            .compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Acquire)
            .is_ok(),
    )
}

/// Takes one off the count of a packed (epoch, count) word, if it still holds `epoch` and
/// counted one.
fn take_one_off(word: &AtomicU64, epoch: u64) -> bool {
    let mut cur = word.load(Ordering::Acquire);
    loop {
        if u64::from(epoch_of(cur)) != epoch || cur as u32 == 0 {
            return false;
        }
        match word.compare_exchange_weak(cur, cur - 1, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return true,
            Err(now) => cur = now,
        }
    }
}

/// A copy of a budget's state at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BudgetSnapshot {
    /// Whole retries that could be withdrawn now.
    pub available: u64,
    /// First attempts recorded since the start.
    pub deposits: u64,
    /// Retries granted since the start.
    pub withdrawals: u64,
    /// Retries refused since the start.
    pub refused: u64,
}

/// A retry budget shared by name.
#[derive(Debug)]
pub struct Budget {
    spec: BudgetSpec,
    origin: Instant,
    /// Units one first attempt deposits.
    deposit: i32,
    /// The balance and the buckets, on cache lines of their own (see [`Hot`]).
    hot: Hot,
    /// The floor: the epoch (high 32 bits) and the retries it granted in it (low 32 bits).
    floor: AtomicU64,
    /// Every bucket older than the window as of this epoch has been recycled.
    swept: AtomicU64,
    /// The allowance for never-processed retries: the window (high 32 bits) and the retries it
    /// granted in it (low 32 bits).
    unprocessed: AtomicU64,
    /// First attempts, on every thread: striped.
    deposits: crate::counters::Striped,
    withdrawals: AtomicU64,
    refused: AtomicU64,
}

/// What the recording of first attempts writes (a thread's batch, about once every eight
/// calls), apart from what every call reads (`swept`, `origin`, `deposit`): one thread's
/// recording then does not take from the other threads the line they read on every call.
#[derive(Debug)]
#[repr(align(128))]
struct Hot {
    /// Units deposits can still pay for: the net of the live buckets.
    balance: AtomicI64,
    buckets: [AtomicU64; BUCKETS],
}

impl Budget {
    /// How long deposits and withdrawals count.
    pub const WINDOW: Duration = Duration::from_secs(BUCKETS as u64 * BUCKET_SECS);

    /// How many buckets the window slides by.
    pub const BUCKETS: usize = BUCKETS;

    /// Retries of never-processed requests (connect failures, stale pooled connections)
    /// granted per window beyond the budget proper: as many as the idle connections a default
    /// client keeps per host ([`ClientSettings::DEFAULT`](crate::ClientSettings::DEFAULT)), so
    /// that a whole pool going stale at once is retried.
    pub const UNPROCESSED_BURST: u32 = 32;

    /// An empty budget: only the floor can grant retries until first attempts come in.
    ///
    /// # Panics
    ///
    /// If `spec` is invalid (see [`BudgetSpec::validate`]); [`Budget::try_new`] returns the error.
    pub fn new(spec: BudgetSpec) -> Budget {
        match Budget::try_new(spec) {
            Ok(b) => b,
            Err(e) => panic!("{e}"),
        }
    }

    /// An empty budget, or why `spec` is invalid.
    pub fn try_new(spec: BudgetSpec) -> Result<Budget, InvalidPolicy> {
        spec.validate()?;
        Ok(Budget {
            spec,
            origin: Instant::now(),
            // In thousandths, rounded down (a ratio never buys more retries than it says:
            // 0.0007 rounded to nearest would allow 0.001); the tolerance keeps 0.29, which
            // is 289.99… thousandths in binary, at 290.
            deposit: (spec.ratio * UNIT as f64 + 1e-6).floor() as i32,
            hot: Hot {
                balance: AtomicI64::new(0),
                buckets: Default::default(),
            },
            floor: AtomicU64::new(pack(0, 0)),
            swept: AtomicU64::new(0),
            unprocessed: AtomicU64::new(pack(0, 0)),
            deposits: Default::default(),
            withdrawals: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        })
    }

    /// Its settings.
    pub fn spec(&self) -> BudgetSpec {
        self.spec
    }

    /// Records one first attempt.
    pub fn deposit(&self) {
        self.deposit_at(Instant::now());
    }

    /// Records one first attempt made at `now` (saves a clock read when the caller has one).
    #[inline]
    pub fn deposit_at(&self, now: Instant) {
        let epoch = self.tick_at(now);
        self.deposits.incr();
        if self.deposit == 0 {
            return;
        }
        // Bucket first, balance second: if the bucket expires in between, the balance is
        // briefly low, never high. A full bucket (2 million retries' worth) drops the deposit.
        if self.record(epoch, self.deposit) {
            self.hot
                .balance
                .fetch_add(i64::from(self.deposit), Ordering::AcqRel);
        }
    }

    /// Records one first attempt made at `now`, for a budget the runtime shares between calls
    /// on many threads: the thread keeps a batch of them ([`BATCH`]), made in the same second,
    /// and records it in that second's bucket at once, when it is full (one write to the
    /// shared words for the batch, not two for each first attempt, whose cache lines would
    /// otherwise move from core to core on every call). A batch of an earlier
    /// second is recorded in that second's bucket when the thread next deposits in another
    /// second, or withdraws from or reads this budget, or when a batch of another budget takes
    /// its place; one whose second has left the window by then is dropped. So a deposit never
    /// counts longer than one recorded at once, and a thread holds back at most `BATCH - 1`
    /// first attempts of each budget until it calls again or ends (its batches are recorded
    /// then). The count of first attempts stays exact.
    #[inline]
    pub(crate) fn deposit_batched(&'static self, now: Instant) {
        // Nothing to deposit (a ratio of zero): counted only.
        if self.deposit == 0 {
            self.deposit_at(now);
            return;
        }
        let epoch = self.tick_at(now);
        self.deposits.incr();
        BATCHES.with(|b| {
            let slot = &b.0[batch_slot(self)];
            // The common case, small enough to be inlined with the thread-local's access: one
            // more in this budget's batch of this second.
            if let Some(mut p) = slot.get()
                && std::ptr::eq(p.budget, self)
                && p.epoch == epoch
                && p.count + 1 < BATCH
            {
                p.count += 1;
                slot.set(Some(p));
                return;
            }
            self.batch_turned(slot, epoch);
        });
    }

    /// [`deposit_batched`](Self::deposit_batched) when the slot's batch is full, of another
    /// second or of another budget: recorded, and a new batch started (or, full, none).
    #[cold]
    #[inline(never)]
    fn batch_turned(&'static self, slot: &Cell<Option<Batch>>, epoch: u64) {
        match slot.get() {
            Some(p) if std::ptr::eq(p.budget, self) && p.epoch == epoch => {
                slot.set(None);
                self.add_deposits(epoch, p.count + 1);
            }
            earlier => {
                slot.set(Some(Batch {
                    budget: self,
                    epoch,
                    count: 1,
                }));
                if let Some(p) = earlier {
                    p.budget.add_deposits(p.epoch, p.count);
                }
            }
        }
    }

    /// Records `count` first attempts made in `epoch`, in that epoch's bucket and the balance:
    /// none if that epoch has left the window.
    fn add_deposits(&self, epoch: u64, count: u32) {
        let Ok(count) = i32::try_from(count) else {
            return;
        };
        let units = self.deposit.saturating_mul(count);
        // Bucket first, balance second, as `deposit_at`.
        if self.record_exact(epoch, units) {
            self.hot
                .balance
                .fetch_add(i64::from(units), Ordering::AcqRel);
        }
    }

    /// This thread's batch of first attempts for this budget, recorded now: a withdrawal or
    /// a reading on the thread that made them sees them all.
    fn flush_mine(&self) {
        if self.deposit == 0 {
            return;
        }
        BATCHES.with(|b| {
            let slot = &b.0[batch_slot(self)];
            if let Some(p) = slot.get()
                && std::ptr::eq(p.budget, self)
            {
                slot.set(None);
                self.add_deposits(p.epoch, p.count);
            }
        });
    }

    /// Takes one retry from the budget; false when it is spent.
    pub fn withdraw(&self) -> bool {
        self.withdraw_at(Instant::now())
    }

    /// Takes one retry due at `now` from the budget; false when it is spent.
    pub fn withdraw_at(&self, now: Instant) -> bool {
        self.take_at(now).is_some()
    }

    /// [`withdraw_at`](Self::withdraw_at), saying where the retry came from, so that one
    /// never used can be [given back](Self::give_back).
    fn take_at(&self, now: Instant) -> Option<Token> {
        let epoch = self.tick_at(now);
        self.flush_mine();
        if let Some(second) = self.take_floor(epoch) {
            self.withdrawals.fetch_add(1, Ordering::Relaxed);
            return Some(Token::Floor(second));
        }
        let taken = self
            .hot
            .balance
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                (b >= UNIT).then_some(b - UNIT)
            })
            .is_ok();
        // Balance first, bucket second: if the clock moves on in between, the withdrawal is
        // recorded in a later bucket and counts a little longer.
        if taken && let Some(at) = self.record_at(epoch, -(UNIT as i32)) {
            self.withdrawals.fetch_add(1, Ordering::Relaxed);
            return Some(Token::Balance(at));
        }
        if taken {
            self.hot.balance.fetch_add(UNIT, Ordering::AcqRel);
        }
        self.refused.fetch_add(1, Ordering::Relaxed);
        None
    }

    /// Takes one retry of a failure of `class` due at `now`: from the budget proper, or, for a
    /// request that was never processed ([`Class::Connect`](crate::Class::Connect), or a
    /// connection lost before the answer, [`Class::Reset`](crate::Class::Reset)), from the
    /// allowance of [`UNPROCESSED_BURST`](Self::UNPROCESSED_BURST) per window when the budget
    /// proper is spent. False when neither has a retry left.
    pub fn withdraw_retry_at(&self, class: crate::Class, now: Instant) -> bool {
        self.take_retry_at(class, now).is_some()
    }

    /// [`withdraw_retry_at`](Self::withdraw_retry_at), saying where the retry came from.
    pub(crate) fn take_retry_at(&self, class: crate::Class, now: Instant) -> Option<Token> {
        if let Some(t) = self.take_at(now) {
            return Some(t);
        }
        if !matches!(class, crate::Class::Connect | crate::Class::Reset) {
            return None;
        }
        let window = self.epoch_at(now) / BUCKETS as u64;
        let mut cur = self.unprocessed.load(Ordering::Acquire);
        loop {
            let held = u64::from(epoch_of(cur));
            let next = if held < window {
                pack(window as u32, 1)
            } else if (cur as u32) < Self::UNPROCESSED_BURST {
                cur + 1
            } else {
                return None;
            };
            match self.unprocessed.compare_exchange_weak(
                cur,
                next,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    // `take_at` counted a refusal; it was granted after all.
                    self.refused.fetch_sub(1, Ordering::Relaxed);
                    self.withdrawals.fetch_add(1, Ordering::Relaxed);
                    return Some(Token::Unprocessed(u64::from(epoch_of(next))));
                }
                Err(now) => cur = now,
            }
        }
    }

    /// Gives back a retry that was taken but never made (the breaker refused it, the deadline
    /// came first, the caller stopped waiting during the backoff): as if it had not been
    /// taken, while what it was taken from still counts. One taken from a second, a bucket or
    /// a window that has since passed is not given back: its passing already did.
    pub(crate) fn give_back(&self, token: Token) {
        let given = match token {
            Token::Floor(second) => take_one_off(&self.floor, second),
            Token::Unprocessed(window) => take_one_off(&self.unprocessed, window),
            Token::Balance(epoch) => {
                // Bucket first, balance second, as a deposit: the balance is briefly low, never
                // high; a bucket recycled in between takes out a net already given back.
                let bucket = &self.hot.buckets[epoch as usize % BUCKETS];
                let mut cur = bucket.load(Ordering::Acquire);
                loop {
                    if u64::from(epoch_of(cur)) != epoch {
                        break false;
                    }
                    let Some(net) = net_of(cur).checked_add(UNIT as i32) else {
                        break false;
                    };
                    match bucket.compare_exchange_weak(
                        cur,
                        pack(epoch as u32, net),
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    ) {
                        Ok(_) => {
                            self.hot.balance.fetch_add(UNIT, Ordering::AcqRel);
                            break true;
                        }
                        Err(now) => cur = now,
                    }
                }
            }
        };
        if given {
            self.withdrawals.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Whole retries that could be withdrawn now.
    pub fn available(&self) -> u64 {
        let epoch = self.tick_at(Instant::now());
        self.flush_mine();
        self.available_in(epoch)
    }

    /// What [`available`](Self::available) says at `now`, without recording this thread's
    /// batch of first attempts first: for the gauge set at the end of every call, from the
    /// clock reading that timed it. Recording the batch there would undo the batching (two
    /// writes to lines every thread shares, on every call); what it holds back is less than
    /// one retry at the default ratio, and is recorded within eight calls.
    #[cfg(feature = "metrics")]
    pub(crate) fn available_for_gauge(&self, now: Instant) -> u64 {
        self.available_in(self.tick_at(now))
    }

    fn available_in(&self, epoch: u64) -> u64 {
        let floor = self.floor.load(Ordering::Acquire);
        let used = if u64::from(epoch_of(floor)) < epoch {
            0
        } else {
            floor as u32
        };
        let floor_left = self.spec.min_per_sec.saturating_sub(used);
        (self.hot.balance.load(Ordering::Acquire) / UNIT).max(0) as u64 + u64::from(floor_left)
    }

    /// Grants one retry from this second's floor, if any is left: the second it is counted
    /// in.
    fn take_floor(&self, epoch: u64) -> Option<u64> {
        let min = self.spec.min_per_sec;
        if min == 0 {
            return None;
        }
        let mut cur = self.floor.load(Ordering::Acquire);
        loop {
            let held = u64::from(epoch_of(cur));
            let used = cur as u32;
            let next = if held < epoch {
                pack(epoch as u32, 1)
            } else if used < min {
                // `held > epoch` only if another caller read the clock later: its second counts.
                cur + 1
            } else {
                return None;
            };
            match self
                .floor
                .compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Some(u64::from(epoch_of(next))),
                Err(now) => cur = now,
            }
        }
    }

    /// Its level and counters now.
    pub fn snapshot(&self) -> BudgetSnapshot {
        BudgetSnapshot {
            available: self.available(),
            deposits: self.deposits.get(),
            withdrawals: self.withdrawals.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
        }
    }

    fn epoch_at(&self, now: Instant) -> u64 {
        let secs = now.saturating_duration_since(self.origin).as_secs();
        // Saturates after 136 years: everything then lands in one bucket, still bounded.
        (secs / BUCKET_SECS).min(u64::from(u32::MAX))
    }

    /// The current epoch, after every bucket that fell out of the window has been recycled.
    ///
    /// Within the second the last sweep was made for (every call of a busy second but its
    /// first), that second is the epoch: one comparison of instants instead of the clock
    /// arithmetic. A caller whose `now` was read just before another moved the sweep on gets
    /// the later second, as a deposit made a moment later would.
    #[inline]
    fn tick_at(&self, now: Instant) -> u64 {
        let swept = self.swept.load(Ordering::Acquire);
        if now < self.origin + Duration::from_secs((swept + 1) * BUCKET_SECS) {
            return swept;
        }
        self.tick_slow(now)
    }

    #[cold]
    #[inline(never)]
    fn tick_slow(&self, now: Instant) -> u64 {
        let epoch = self.epoch_at(now);
        self.sweep(epoch);
        epoch
    }

    fn sweep(&self, epoch: u64) {
        let swept = self.swept.load(Ordering::Acquire);
        if swept >= epoch {
            return;
        }
        let first = (swept + 1).max((epoch + 1).saturating_sub(BUCKETS as u64));
        for e in first..=epoch {
            self.recycle(e);
        }
        self.swept.fetch_max(epoch, Ordering::AcqRel);
    }

    /// Makes the bucket of `epoch` hold `epoch`, taking its old net out of the balance (once).
    fn recycle(&self, epoch: u64) {
        let bucket = &self.hot.buckets[epoch as usize % BUCKETS];
        let mut cur = bucket.load(Ordering::Acquire);
        while u64::from(epoch_of(cur)) < epoch {
            match bucket.compare_exchange_weak(
                cur,
                pack(epoch as u32, 0),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    self.hot
                        .balance
                        .fetch_sub(i64::from(net_of(cur)), Ordering::AcqRel);
                    return;
                }
                Err(now) => cur = now,
            }
        }
    }

    /// Adds `units` to the bucket of `epoch` itself (recycled first if it still holds an older
    /// one); false if that epoch has left the window (its bucket holds a later one) or the
    /// bucket would overflow: a batch recorded late counts from when it was made, never longer.
    fn record_exact(&self, epoch: u64, units: i32) -> bool {
        let bucket = &self.hot.buckets[epoch as usize % BUCKETS];
        loop {
            let cur = bucket.load(Ordering::Acquire);
            let held = u64::from(epoch_of(cur));
            if held == epoch {
                match add_to(bucket, cur, units) {
                    Some(true) => return true,
                    Some(false) => {}
                    None => return false,
                }
            } else if held > epoch {
                return false;
            } else {
                self.recycle(epoch);
            }
        }
    }

    /// Adds `units` to the bucket of `epoch` (or of a later epoch if the clock moved on);
    /// false if the bucket would overflow.
    fn record(&self, epoch: u64, units: i32) -> bool {
        self.record_at(epoch, units).is_some()
    }

    /// [`record`](Self::record), saying in which epoch's bucket.
    #[inline]
    fn record_at(&self, epoch: u64, units: i32) -> Option<u64> {
        // The bucket already holds this epoch (every record of a second but its first): one
        // compare-and-swap, inline.
        let bucket = &self.hot.buckets[epoch as usize % BUCKETS];
        let cur = bucket.load(Ordering::Acquire);
        if u64::from(epoch_of(cur)) == epoch && add_to(bucket, cur, units) == Some(true) {
            return Some(epoch);
        }
        self.record_slow(epoch, units)
    }

    #[inline(never)]
    fn record_slow(&self, mut epoch: u64, units: i32) -> Option<u64> {
        loop {
            let bucket = &self.hot.buckets[epoch as usize % BUCKETS];
            let cur = bucket.load(Ordering::Acquire);
            let held = u64::from(epoch_of(cur));
            if held == epoch {
                if add_to(bucket, cur, units)? {
                    return Some(epoch);
                }
            } else if held > epoch {
                // Another caller has seen a later second: record there.
                epoch = self.epoch_at(Instant::now()).max(held);
                self.sweep(epoch);
            } else {
                self.recycle(epoch);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::advance;

    const NO_FLOOR: BudgetSpec = BudgetSpec {
        ratio: 0.1,
        min_per_sec: 0,
    };

    fn leaked(spec: BudgetSpec) -> &'static Budget {
        Box::leak(Box::new(Budget::new(spec)))
    }

    /// A thread's batched first attempts are all seen by a withdrawal or a reading on that
    /// thread, and count as if recorded at once.
    /// The ratio counts in thousandths, rounded down: 1000 first attempts at 0.0017 buy one
    /// retry (1.7 of them; rounded to nearest they bought two), at 0.001 one, and 0.29 buys
    /// 290 per 1000 (not 289, though 0.29 × 1000 is 289.99… in binary). A ratio under 0.001,
    /// which would count as none, is refused.
    #[tokio::test(start_paused = true)]
    async fn the_ratio_never_buys_more_retries_than_it_says() {
        assert!(
            Budget::try_new(BudgetSpec {
                ratio: 0.0007,
                min_per_sec: 0
            })
            .is_err()
        );
        for (ratio, bought) in [(0.0017, 1), (0.001, 1), (0.29, 290), (1.0, 1000)] {
            let b = Budget::new(BudgetSpec {
                ratio,
                min_per_sec: 0,
            });
            let now = Instant::now();
            for _ in 0..1000 {
                b.deposit_at(now);
            }
            let mut retries = 0;
            while retries <= 1000 && b.withdraw_at(now) {
                retries += 1;
            }
            assert_eq!(retries, bought, "ratio {ratio}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn batched_deposits_are_seen_by_their_own_thread() {
        let b = leaked(NO_FLOOR);
        assert_eq!(BATCH, 8, "the arithmetic below");
        for _ in 0..25 {
            b.deposit_batched(Instant::now());
        }
        // 25 first attempts at 10%: two retries, the one held back included.
        assert_eq!(b.available(), 2);
        assert_eq!(b.snapshot().deposits, 25);
        for _ in 0..5 {
            b.deposit_batched(Instant::now());
        }
        assert_eq!(drain(b), 3, "30 first attempts at 10%");
    }

    /// Another thread's batch is held back while it runs (never more than seven first
    /// attempts), and recorded when it ends.
    #[test]
    fn a_thread_holds_back_its_batch_until_it_ends() {
        use std::sync::{Arc, Barrier};
        let b = leaked(NO_FLOOR);
        let now = Instant::now();
        let (deposited, read) = (Arc::new(Barrier::new(2)), Arc::new(Barrier::new(2)));
        // Not a scoped thread: a scope ends when its threads' closures have returned, which
        // may be before their thread-locals are dropped; `join` waits for the thread's end.
        let thread = std::thread::spawn({
            let (deposited, read) = (deposited.clone(), read.clone());
            move || {
                for _ in 0..15 {
                    b.deposit_batched(now);
                }
                deposited.wait();
                read.wait();
            }
        });
        deposited.wait();
        // 15 first attempts at 10%: 8 recorded (0.8 of a retry), 7 held by the thread.
        assert_eq!(b.available(), 0);
        assert_eq!(b.hot.balance.load(Ordering::Acquire), 800);
        read.wait();
        thread.join().expect("the depositing thread");
        // The thread has ended: all 15 recorded.
        assert_eq!(b.hot.balance.load(Ordering::Acquire), 1500);
        assert_eq!(b.available(), 1);
        assert_eq!(b.snapshot().deposits, 15);
    }

    /// A batch recorded late counts in the second it was made: it leaves the window with that
    /// second, and one recorded after that second left is dropped.
    #[tokio::test(start_paused = true)]
    async fn a_late_batch_counts_from_its_own_second() {
        let b = leaked(NO_FLOOR);
        for _ in 0..7 {
            b.deposit_batched(Instant::now());
        }
        advance(Duration::from_secs(5)).await;
        // The first batch is recorded (in second 0) as the next begins.
        for _ in 0..9 {
            b.deposit_batched(Instant::now());
        }
        assert_eq!(b.available(), 1, "16 first attempts at 10%");
        advance(Duration::from_millis(5_200)).await;
        // Second 0 has left the window: 9 first attempts' worth left.
        assert_eq!(b.available(), 0);
        assert_eq!(b.hot.balance.load(Ordering::Acquire), 900);
        // A batch whose second left the window before it was recorded counts for nothing.
        let late = leaked(NO_FLOOR);
        for _ in 0..7 {
            late.deposit_batched(Instant::now());
        }
        advance(Duration::from_secs(11)).await;
        assert_eq!(late.available(), 0);
        assert_eq!(late.hot.balance.load(Ordering::Acquire), 0);
        assert_eq!(late.snapshot().deposits, 7);
    }

    fn drain(b: &Budget) -> u32 {
        let mut n = 0;
        while b.withdraw() {
            n += 1;
        }
        n
    }

    #[tokio::test(start_paused = true)]
    async fn never_processed_retries_have_their_own_allowance_per_window() {
        use crate::Class;
        let b = Budget::new(NO_FLOOR);
        let now = Instant::now();
        // Answered or ambiguous failures get nothing beyond the budget proper.
        assert!(!b.withdraw_retry_at(Class::Status(503), now));
        assert!(!b.withdraw_retry_at(Class::Timeout, now));
        let granted = (0..100)
            .filter(|i| {
                let class = if i % 2 == 0 {
                    Class::Connect
                } else {
                    Class::Reset
                };
                b.withdraw_retry_at(class, now)
            })
            .count();
        assert_eq!(granted, Budget::UNPROCESSED_BURST as usize);
        let s = b.snapshot();
        assert_eq!((s.withdrawals, s.refused), (32, 2 + 68));
        // The budget proper comes first: deposits pay before the allowance.
        for _ in 0..10 {
            b.deposit_at(now);
        }
        assert!(b.withdraw_retry_at(Class::Reset, now));
        assert!(!b.withdraw_retry_at(Class::Reset, now));
        advance(Budget::WINDOW).await;
        assert!(
            b.withdraw_retry_at(Class::Connect, Instant::now()),
            "a new window"
        );
    }

    /// A retry taken and never made goes back where it came from (the second's floor, the
    /// deposits, the window's allowance); one whose second or window has passed does not (the
    /// floor and the allowance renewed, a spent deposit's bucket left the window).
    #[tokio::test(start_paused = true)]
    async fn a_retry_never_made_is_given_back_where_it_came_from() {
        use crate::Class;
        let b = Budget::new(BudgetSpec {
            ratio: 0.1,
            min_per_sec: 1,
        });
        let now = Instant::now();
        for _ in 0..10 {
            b.deposit_at(now);
        }
        assert_eq!(b.available(), 2, "the floor and one deposited");
        let floor = b.take_retry_at(Class::Status(503), now).unwrap();
        assert!(matches!(floor, Token::Floor(_)), "{floor:?}");
        let deposit = b.take_retry_at(Class::Status(503), now).unwrap();
        assert!(matches!(deposit, Token::Balance(_)), "{deposit:?}");
        let unprocessed = b.take_retry_at(Class::Connect, now).unwrap();
        assert!(
            matches!(unprocessed, Token::Unprocessed(_)),
            "{unprocessed:?}"
        );
        assert_eq!(b.available(), 0);
        assert_eq!(b.snapshot().withdrawals, 3);
        b.give_back(floor);
        b.give_back(deposit);
        b.give_back(unprocessed);
        assert_eq!(b.available(), 2, "both back");
        assert_eq!(b.snapshot().withdrawals, 0);
        // The allowance's retry is back too: the floor, the deposit and the whole burst.
        let granted = (0..100)
            .filter(|_| b.take_retry_at(Class::Reset, now).is_some())
            .count();
        assert_eq!(granted, 2 + Budget::UNPROCESSED_BURST as usize);

        // Taken, then given back after their second and bucket passed: nothing comes back
        // that the window did not already return.
        let b = Budget::new(BudgetSpec {
            ratio: 0.1,
            min_per_sec: 1,
        });
        for _ in 0..10 {
            b.deposit_at(now);
        }
        let floor = b.take_retry_at(Class::Status(503), now).unwrap();
        let deposit = b.take_retry_at(Class::Status(503), now).unwrap();
        advance(Budget::WINDOW + Duration::from_secs(1)).await;
        let before = b.available();
        b.give_back(floor);
        b.give_back(deposit);
        assert_eq!(b.available(), before, "their second and bucket are gone");
        assert_eq!(before, 1, "the new second's floor; the deposits expired");
    }

    #[tokio::test(start_paused = true)]
    async fn the_floor_grants_min_per_sec_in_every_second() {
        let b = Budget::new(BudgetSpec {
            ratio: 0.1,
            min_per_sec: 3,
        });
        assert_eq!(b.available(), 3);
        assert_eq!(drain(&b), 3);
        assert_eq!(b.available(), 0);
        advance(Duration::from_millis(999)).await;
        assert!(!b.withdraw(), "still the same second");
        advance(Duration::from_millis(1)).await;
        assert_eq!(b.available(), 3);
        assert_eq!(drain(&b), 3);
        // An idle second does not carry over.
        advance(Duration::from_secs(5)).await;
        assert_eq!(drain(&b), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn the_floor_is_spent_before_the_deposits() {
        let b = Budget::new(BudgetSpec {
            ratio: 0.1,
            min_per_sec: 2,
        });
        for _ in 0..30 {
            b.deposit();
        }
        assert_eq!(b.available(), 5);
        assert!(b.withdraw() && b.withdraw());
        assert_eq!(b.available(), 3, "the floor went first");
        advance(Duration::from_secs(1)).await;
        assert_eq!(drain(&b), 5, "3 deposited + 2 from the new second's floor");
    }

    #[tokio::test(start_paused = true)]
    async fn ten_percent_of_first_attempts() {
        let b = Budget::new(NO_FLOOR);
        assert!(!b.withdraw());
        for _ in 0..9 {
            b.deposit();
        }
        assert!(!b.withdraw(), "9 deposits of 0.1 are not a whole retry");
        b.deposit();
        assert!(b.withdraw());
        assert!(!b.withdraw());
        for _ in 0..1000 {
            b.deposit();
        }
        assert_eq!(drain(&b), 100);
    }

    #[tokio::test(start_paused = true)]
    async fn ratio_is_counted_in_thousandths() {
        let b = Budget::new(BudgetSpec {
            ratio: 0.25,
            min_per_sec: 0,
        });
        for _ in 0..10 {
            b.deposit();
        }
        assert_eq!(drain(&b), 2);
        b.deposit();
        b.deposit();
        assert_eq!(drain(&b), 1, "2.5 + 0.5 deposited, 2 spent");
    }

    #[tokio::test(start_paused = true)]
    async fn zero_ratio_and_zero_floor_never_retries() {
        let b = Budget::new(BudgetSpec {
            ratio: 0.0,
            min_per_sec: 0,
        });
        for _ in 0..100 {
            b.deposit();
        }
        assert!(!b.withdraw());
        assert_eq!(b.snapshot().refused, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn deposits_expire_after_the_window() {
        let b = Budget::new(NO_FLOOR);
        for _ in 0..100 {
            b.deposit();
        }
        assert_eq!(b.available(), 10);
        advance(Budget::WINDOW - Duration::from_millis(1)).await;
        assert_eq!(b.available(), 10, "still inside the window");
        advance(Duration::from_millis(1)).await;
        assert_eq!(b.available(), 0, "the bucket of second 0 has expired");
        assert!(!b.withdraw());
    }

    #[tokio::test(start_paused = true)]
    async fn window_slides_one_bucket_at_a_time() {
        let b = Budget::new(NO_FLOOR);
        // 10 deposits (1 retry) in each of seconds 0..5.
        for _ in 0..5 {
            for _ in 0..10 {
                b.deposit();
            }
            advance(Duration::from_secs(1)).await;
        }
        assert_eq!(b.available(), 5);
        // At second 10, second 0 expires; at 14, all of them.
        advance(Duration::from_secs(5)).await;
        assert_eq!(b.available(), 4);
        advance(Duration::from_secs(3)).await;
        assert_eq!(b.available(), 1);
        advance(Duration::from_secs(1)).await;
        assert_eq!(b.available(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_counts_for_a_whole_window_like_the_deposit_it_spent() {
        let b = Budget::new(NO_FLOOR);
        for _ in 0..10 {
            b.deposit();
        }
        advance(Duration::from_secs(5)).await;
        for _ in 0..10 {
            b.deposit();
        }
        assert_eq!(drain(&b), 2, "at second 5, both seconds' deposits");
        // At second 10, second 0's deposit leaves the window, but the retry it paid for (in
        // second 5) is still in it: seconds 1..=10 hold 20 first attempts and 2 retries.
        advance(Duration::from_secs(5)).await;
        for _ in 0..10 {
            b.deposit();
        }
        assert_eq!(b.available(), 0);
        assert!(!b.withdraw());
        // At second 15, the retries of second 5 leave too: second 10's deposit is free again.
        advance(Duration::from_secs(5)).await;
        assert_eq!(drain(&b), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn long_idle_expires_every_bucket_once() {
        let b = Budget::new(NO_FLOOR);
        for s in 0..10 {
            for _ in 0..10 * (s + 1) {
                b.deposit();
            }
            advance(Duration::from_secs(1)).await;
        }
        // Now at second 10: second 0 (one retry) has left the window.
        assert_eq!(b.available(), 54);
        assert!(b.withdraw());
        advance(Duration::from_secs(3600)).await;
        assert_eq!(b.available(), 0);
        // The budget keeps working after the gap.
        for _ in 0..10 {
            b.deposit();
        }
        assert_eq!(drain(&b), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn snapshot_counts_every_call() {
        let b = Budget::new(BudgetSpec {
            ratio: 0.5,
            min_per_sec: 0,
        });
        for _ in 0..4 {
            b.deposit();
        }
        let granted = (0..5).filter(|_| b.withdraw()).count();
        assert_eq!(granted, 2);
        assert_eq!(
            b.snapshot(),
            BudgetSnapshot {
                available: 0,
                deposits: 4,
                withdrawals: 2,
                refused: 3,
            }
        );
    }

    #[test]
    fn spec_ranges() {
        assert!(BudgetSpec::DEFAULT.validate().is_ok());
        for ratio in [-0.1, 10.5, f64::NAN, f64::INFINITY] {
            let spec = BudgetSpec {
                ratio,
                min_per_sec: 1,
            };
            assert!(spec.validate().is_err(), "{ratio}");
            assert!(Budget::try_new(spec).is_err());
        }
        let spec = BudgetSpec {
            ratio: 0.1,
            min_per_sec: BudgetSpec::MAX_MIN_PER_SEC + 1,
        };
        assert!(spec.validate().is_err());
    }

    #[test]
    fn bucket_packing_round_trips() {
        for (e, n) in [(0, 0), (1, -1), (u32::MAX, i32::MIN), (7, i32::MAX)] {
            let s = pack(e, n);
            assert_eq!((epoch_of(s), net_of(s)), (e, n));
        }
    }
}
