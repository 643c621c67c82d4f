//! Pauses between attempts to get a lost change feed back.

use std::time::Duration;

/// A pause that doubles after every failed attempt, up to a bound, and starts again from the
/// first after a success.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// Starting at `first`, doubled up to `max`.
    pub(crate) const fn new(first: Duration, max: Duration) -> Self {
        Backoff {
            first,
            max,
            next: first,
        }
    }

    /// The same pause every time.
    pub(crate) const fn fixed(every: Duration) -> Self {
        Self::new(every, every)
    }

    /// The pause before the next attempt; the one after it is twice as long (up to the bound).
    pub(crate) fn next_pause(&mut self) -> Duration {
        let pause = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        pause
    }

    /// An attempt succeeded: the next failure waits the first pause again.
    pub(crate) fn reset(&mut self) {
        self.next = self.first;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_bound_and_starts_again_after_a_success() {
        let ms = Duration::from_millis;
        let mut backoff = Backoff::new(ms(50), ms(300));
        let pauses: Vec<_> = (0..5).map(|_| backoff.next_pause()).collect();
        assert_eq!(pauses, [ms(50), ms(100), ms(200), ms(300), ms(300)]);
        backoff.reset();
        assert_eq!(backoff.next_pause(), ms(50));
        let mut fixed = Backoff::fixed(ms(200));
        assert_eq!([fixed.next_pause(), fixed.next_pause()], [ms(200), ms(200)]);
    }
}
