//! Anomaly alerts: per user and minute, counts of denied file accesses and of allowed decrypts
//! (opens of existing files); reaching a threshold of the key store's `alerts` settings produces
//! one `AnomalyAlert` audit record for that user and minute.

use dashmap::DashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AlertKind {
    Denials,
    Decrypts,
}

impl AlertKind {
    pub fn name(self) -> &'static str {
        match self {
            AlertKind::Denials => "denials",
            AlertKind::Decrypts => "decrypts",
        }
    }
}

/// (minute, count, alerted) per user and kind.
#[derive(Debug, Default)]
pub struct Detector {
    windows: DashMap<(u32, AlertKind), (u64, u32, bool)>,
}

impl Detector {
    /// Counts one event of `uid` at `now` (Unix seconds). Returns the count when it has just
    /// reached `threshold` in the current minute (once per user, kind and minute).
    pub fn note(&self, uid: u32, kind: AlertKind, now: u64, threshold: Option<u32>) -> Option<u32> {
        let t = threshold?;
        let minute = now / 60;
        if self.windows.len() > 10_000 {
            self.windows.retain(|_, w| w.0 == minute);
        }
        let mut w = self
            .windows
            .entry((uid, kind))
            .or_insert((minute, 0, false));
        if w.0 != minute {
            *w = (minute, 0, false);
        }
        w.1 += 1;
        if w.1 >= t && !w.2 {
            w.2 = true;
            Some(w.1)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_alert_per_user_kind_and_minute() {
        let d = Detector::default();
        let t = Some(3);
        assert_eq!(d.note(1, AlertKind::Denials, 600, t), None);
        assert_eq!(d.note(1, AlertKind::Denials, 601, t), None);
        assert_eq!(d.note(2, AlertKind::Denials, 601, t), None);
        assert_eq!(d.note(1, AlertKind::Denials, 602, t), Some(3));
        assert_eq!(d.note(1, AlertKind::Denials, 603, t), None);
        assert_eq!(d.note(1, AlertKind::Decrypts, 603, t), None);
        // A new minute starts over.
        for s in 660..662 {
            assert_eq!(d.note(1, AlertKind::Denials, s, t), None);
        }
        assert_eq!(d.note(1, AlertKind::Denials, 662, t), Some(3));
        assert_eq!(d.note(1, AlertKind::Denials, 700, None), None);
    }
}
