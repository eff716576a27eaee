//! Per-worker counters that a scrape sums: [`crate::counters!`] declares a struct of `u64`s (or arrays
//! or structs of them) and its field-wise [`Accumulate`], so a new counter is one field — no
//! hand-written line in a sum that could be forgotten.

/// Adds another snapshot's counts into this one, field by field.
pub trait Accumulate {
    /// `self += other`, field by field.
    fn accumulate(&mut self, other: &Self);
}

impl Accumulate for u64 {
    #[inline]
    fn accumulate(&mut self, other: &Self) {
        *self = self.wrapping_add(*other);
    }
}

impl<T: Accumulate, const N: usize> Accumulate for [T; N] {
    fn accumulate(&mut self, other: &Self) {
        for (a, b) in self.iter_mut().zip(other) {
            a.accumulate(b);
        }
    }
}

/// Declares a counters struct and its field-wise [`Accumulate`].
#[macro_export]
macro_rules! counters {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $($(#[$fmeta:meta])* $fvis:vis $field:ident : $ty:ty),* $(,)?
        }
    ) => {
        $(#[$meta])*
        $vis struct $name {
            $($(#[$fmeta])* $fvis $field: $ty),*
        }

        impl $crate::counters::Accumulate for $name {
            fn accumulate(&mut self, other: &Self) {
                $($crate::counters::Accumulate::accumulate(&mut self.$field, &other.$field);)*
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::Accumulate;

    crate::counters! {
        #[derive(Default, Debug, PartialEq)]
        struct Sample {
            a: u64,
            b: [[u64; 2]; 2],
        }
    }

    #[test]
    fn every_field_is_summed() {
        let mut t = Sample::default();
        let one = Sample {
            a: 1,
            b: [[1, 2], [3, 4]],
        };
        t.accumulate(&one);
        t.accumulate(&one);
        assert_eq!(
            t,
            Sample {
                a: 2,
                b: [[2, 4], [6, 8]]
            }
        );
    }
}
