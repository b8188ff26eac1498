//! The pager's lock order, written down and checked. Every lock of a region has a level
//! ([`level`]); a thread takes locks in strictly increasing level and never one at or below
//! one it holds. `docs/design.md` ("Lock order") says why each lock sits where it does.
//!
//! In debug builds each thread keeps the levels it holds (a small fixed array, so it is safe
//! in the SIGBUS handler too) and every acquisition asserts the order; in release builds the
//! wrappers are parking_lot's locks and nothing more.

use std::ops::{Deref, DerefMut};
use std::time::{Duration, Instant};

/// The levels, lowest first.
pub(crate) mod level {
    /// A chunk's reservation or release (on demand), whole: controller calls, slab RPCs and
    /// the stripe table under it, so that two threads never reserve one chunk at once.
    pub const RESERVING: u8 = 5;
    /// The controller's HTTP client: calls to the controller, with nothing else held.
    pub const CONTROLLER_CLIENT: u8 = 10;
    /// A scrub step (shared) against freeing an old fragment slab (exclusive).
    pub const SCRUB_GATE: u8 = 20;
    /// The per-server admin connections: slab alloc/free RPCs are made holding it.
    pub const ADMIN: u8 = 30;
    /// The core: page table, budget, policies, write-back and move queues. No network I/O
    /// at this level or above, only page-sized ioctls.
    pub const CORE: u8 = 40;
    /// The controller ids of the region's servers.
    pub const SERVER_IDS: u8 = 45;
    /// Slots given back whose release the controller has not confirmed.
    pub const UNRELEASED: u8 = 46;
    /// Servers the region lost.
    pub const LOST: u8 = 50;
    /// Each chunk's fragments.
    pub const STRIPES: u8 = 55;
    /// The region's server table.
    pub const SERVERS: u8 = 65;
    /// Leaves: taken last, nothing under them.
    pub const FAILURES: u8 = 70;
    pub const DEGRADED_SINCE: u8 = 72;
    pub const LATENCY: u8 = 80;
    pub const PUSH_REFUSED: u8 = 82;
    pub const PLACEMENT: u8 = 84;
    pub const HELLO_IDS: u8 = 86;
    /// Pages whose faults keep failing, and since when (`fault/handler.rs`).
    pub const FAILING: u8 = 88;
    /// The process-wide address → region map of self-serving (SIGBUS) regions.
    pub const REGIONS: u8 = 90;
}

#[cfg(debug_assertions)]
mod held {
    use std::cell::Cell;

    /// Deepest nesting a thread may reach (there are 14 levels).
    const MAX_HELD: usize = 16;

    thread_local! {
        static HELD: Cell<([u8; MAX_HELD], usize)> = const { Cell::new(([0; MAX_HELD], 0)) };
    }

    pub(super) fn acquire(level: u8, name: &'static str) {
        HELD.with(|h| {
            let (mut levels, n) = h.get();
            if let Some(&top) = levels[..n].iter().max() {
                assert!(level > top, "lock order: {name} (level {level}) taken while holding level {top}");
            }
            assert!(n < MAX_HELD, "lock order: more than {MAX_HELD} locks held");
            levels[n] = level;
            h.set((levels, n + 1));
        });
    }

    pub(super) fn release(level: u8) {
        HELD.with(|h| {
            let (mut levels, n) = h.get();
            // guards may drop out of order: remove the newest entry of this level
            if let Some(i) = levels[..n].iter().rposition(|&l| l == level) {
                levels.copy_within(i + 1..n, i);
                h.set((levels, n - 1));
            }
        });
    }

    /// Asserts the thread holds exactly `level` (a condition variable wait releases it, and
    /// must not sleep holding anything else).
    pub(super) fn holds_only(level: u8, name: &'static str) {
        HELD.with(|h| {
            let (levels, n) = h.get();
            assert!(n == 1 && levels[0] == level, "lock order: waiting on {name} while holding {:?}", &levels[..n]);
        });
    }

    pub(super) fn assert_none_at_or_above(level: u8, what: &str) {
        HELD.with(|h| {
            let (levels, n) = h.get();
            if let Some(&top) = levels[..n].iter().max() {
                assert!(top < level, "lock order: {what} while holding level {top}");
            }
        });
    }
}

#[cfg(not(debug_assertions))]
mod held {
    #[inline(always)]
    pub(super) fn acquire(_: u8, _: &'static str) {}
    #[inline(always)]
    pub(super) fn release(_: u8) {}
    #[inline(always)]
    pub(super) fn holds_only(_: u8, _: &'static str) {}
    #[inline(always)]
    pub(super) fn assert_none_at_or_above(_: u8, _: &str) {}
}

/// Asserts (in debug builds) that no lock at `level` or above is held, e.g. before network
/// I/O, which no lock from [`level::CORE`] up may be held across.
pub(crate) fn assert_none_held_from(level: u8, what: &str) {
    held::assert_none_at_or_above(level, what);
}

/// A mutex at level `L`.
#[derive(Debug, Default)]
pub(crate) struct Mutex<T, const L: u8> {
    inner: parking_lot::Mutex<T>,
}

/// A guard of a [`Mutex`] at level `L`.
pub(crate) struct MutexGuard<'a, T, const L: u8> {
    inner: parking_lot::MutexGuard<'a, T>,
}

impl<T, const L: u8> Mutex<T, L> {
    pub(crate) const fn new(value: T) -> Self {
        Mutex { inner: parking_lot::const_mutex(value) }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, T, L> {
        held::acquire(L, std::any::type_name::<T>());
        MutexGuard { inner: self.inner.lock() }
    }
}

impl<T, const L: u8> MutexGuard<'_, T, L> {
    /// Runs `f` with the lock released, and takes it again.
    pub(crate) fn unlocked<R>(guard: &mut Self, f: impl FnOnce() -> R) -> R {
        held::release(L);
        let out = parking_lot::MutexGuard::unlocked(&mut guard.inner, f);
        held::acquire(L, std::any::type_name::<T>());
        out
    }

    /// Lets a waiting thread in, if one waits, and takes the lock again.
    pub(crate) fn bump(guard: &mut Self) {
        parking_lot::MutexGuard::bump(&mut guard.inner);
    }
}

impl<T, const L: u8> Drop for MutexGuard<'_, T, L> {
    fn drop(&mut self) {
        held::release(L);
    }
}

impl<T, const L: u8> Deref for MutexGuard<'_, T, L> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.inner
    }
}

impl<T, const L: u8> DerefMut for MutexGuard<'_, T, L> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.inner
    }
}

impl<T: std::fmt::Debug, const L: u8> std::fmt::Debug for MutexGuard<'_, T, L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt(f)
    }
}

/// A condition variable used with a [`Mutex`]: a wait holds that lock and nothing else.
#[derive(Debug, Default)]
pub(crate) struct Condvar {
    inner: parking_lot::Condvar,
}

impl Condvar {
    pub(crate) fn new() -> Condvar {
        Condvar { inner: parking_lot::Condvar::new() }
    }

    pub(crate) fn wait_for<T, const L: u8>(&self, guard: &mut MutexGuard<'_, T, L>, timeout: Duration) {
        held::holds_only(L, std::any::type_name::<T>());
        self.inner.wait_for(&mut guard.inner, timeout);
    }

    pub(crate) fn wait_until<T, const L: u8>(&self, guard: &mut MutexGuard<'_, T, L>, deadline: Instant) {
        held::holds_only(L, std::any::type_name::<T>());
        self.inner.wait_until(&mut guard.inner, deadline);
    }

    pub(crate) fn notify_one(&self) -> bool {
        self.inner.notify_one()
    }

    pub(crate) fn notify_all(&self) -> usize {
        self.inner.notify_all()
    }
}

/// A reader-writer lock at level `L`. A thread never takes it twice, not even to read
/// (parking_lot's fair lock could deadlock behind a waiting writer).
#[derive(Debug, Default)]
pub(crate) struct RwLock<T, const L: u8> {
    inner: parking_lot::RwLock<T>,
}

pub(crate) struct ReadGuard<'a, T, const L: u8> {
    inner: parking_lot::RwLockReadGuard<'a, T>,
}

pub(crate) struct WriteGuard<'a, T, const L: u8> {
    inner: parking_lot::RwLockWriteGuard<'a, T>,
}

impl<T, const L: u8> RwLock<T, L> {
    pub(crate) const fn new(value: T) -> Self {
        RwLock { inner: parking_lot::const_rwlock(value) }
    }

    pub(crate) fn read(&self) -> ReadGuard<'_, T, L> {
        held::acquire(L, std::any::type_name::<T>());
        ReadGuard { inner: self.inner.read() }
    }

    pub(crate) fn write(&self) -> WriteGuard<'_, T, L> {
        held::acquire(L, std::any::type_name::<T>());
        WriteGuard { inner: self.inner.write() }
    }
}

impl<T, const L: u8> Drop for ReadGuard<'_, T, L> {
    fn drop(&mut self) {
        held::release(L);
    }
}

impl<T, const L: u8> Drop for WriteGuard<'_, T, L> {
    fn drop(&mut self) {
        held::release(L);
    }
}

impl<T, const L: u8> Deref for ReadGuard<'_, T, L> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.inner
    }
}

impl<T, const L: u8> Deref for WriteGuard<'_, T, L> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.inner
    }
}

impl<T, const L: u8> DerefMut for WriteGuard<'_, T, L> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.inner
    }
}

#[cfg(all(test, debug_assertions))]
mod tests {
    use super::*;

    #[test]
    fn locks_taken_in_order_and_released_in_any_order_pass() {
        let (a, b) = (Mutex::<u8, 10>::new(0), RwLock::<u8, 20>::new(0));
        let c = Mutex::<u8, 30>::new(0);
        let ga = a.lock();
        let gb = b.read();
        drop(ga);
        let gc = c.lock();
        drop(gb);
        drop(gc);
        // everything released: the lowest level may be taken again
        let _again = a.lock();
    }

    #[test]
    #[should_panic(expected = "lock order")]
    fn a_lower_level_under_a_higher_one_panics() {
        let (low, high) = (Mutex::<u8, 10>::new(0), Mutex::<u8, 20>::new(0));
        let _h = high.lock();
        let _l = low.lock();
    }

    #[test]
    #[should_panic(expected = "lock order")]
    fn the_same_level_twice_panics() {
        let l = RwLock::<u8, 55>::new(0);
        let _a = l.read();
        let _b = l.read();
    }

    #[test]
    #[should_panic(expected = "lock order: waiting")]
    fn waiting_while_holding_another_lock_panics() {
        let (outer, inner) = (Mutex::<u8, 10>::new(0), Mutex::<u8, 40>::new(0));
        let _o = outer.lock();
        let mut g = inner.lock();
        Condvar::new().wait_for(&mut g, Duration::from_millis(1));
    }

    #[test]
    fn unlocked_releases_the_level_meanwhile() {
        let (low, core) = (Mutex::<u8, 10>::new(0), Mutex::<u8, 40>::new(0));
        let mut g = core.lock();
        MutexGuard::unlocked(&mut g, || drop(low.lock()));
        assert_none_held_from(50, "nothing above core");
    }
}
