//! Bulkhead: at most N calls in flight per name, with an optional short wait.

use std::time::Duration;

use tokio::sync::{Semaphore, SemaphorePermit};

/// Settings of a bulkhead (`[bulkheads.NAME]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BulkheadSpec {
    pub max_concurrent: u32,
    pub max_wait: Duration,
}

/// Returned when no slot was free in time.
#[derive(Debug, Clone, Copy)]
pub struct BulkheadFull;

/// A bulkhead shared by name.
#[derive(Debug)]
pub struct Bulkhead {
    spec: BulkheadSpec,
    sem: Semaphore,
}

/// A slot, held for the whole call.
#[derive(Debug)]
pub struct BulkheadPermit<'a> {
    _permit: SemaphorePermit<'a>,
}

impl Bulkhead {
    pub fn new(spec: BulkheadSpec) -> Bulkhead {
        Bulkhead {
            spec,
            sem: Semaphore::new(spec.max_concurrent as usize),
        }
    }

    pub async fn acquire(&self) -> Result<BulkheadPermit<'_>, BulkheadFull> {
        if let Ok(p) = self.sem.try_acquire() {
            return Ok(BulkheadPermit { _permit: p });
        }
        if self.spec.max_wait.is_zero() {
            return Err(BulkheadFull);
        }
        match tokio::time::timeout(self.spec.max_wait, self.sem.acquire()).await {
            Ok(Ok(p)) => Ok(BulkheadPermit { _permit: p }),
            _ => Err(BulkheadFull),
        }
    }
}
