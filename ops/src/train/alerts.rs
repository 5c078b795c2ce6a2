//! Failure signals from the seed's pre-mortem, raised once each from the recent losses: a rising
//! loss (divergence) and a plateau.

use crate::context::AlertLevel;

/// Watches the losses of a run.
#[derive(Debug, Default)]
pub struct LossWatch {
    rising: bool,
    plateau: bool,
}

impl LossWatch {
    /// Alerts due after a new loss at `step` of `steps` (`losses`: the most recent, oldest first).
    pub fn observe(&mut self, losses: &[f64], step: u64, steps: u64) -> Vec<(AlertLevel, String)> {
        let mut out = Vec::new();
        if losses.len() >= 100 && !self.rising {
            let n = losses.len().min(100);
            let w = &losses[losses.len() - n..];
            let mean_x = (n - 1) as f64 / 2.0;
            let mean_y = w.iter().sum::<f64>() / n as f64;
            let cov: f64 = w
                .iter()
                .enumerate()
                .map(|(i, y)| (i as f64 - mean_x) * (y - mean_y))
                .sum();
            let var: f64 = (0..n).map(|i| (i as f64 - mean_x).powi(2)).sum();
            if cov / var > 0.01 {
                self.rising = true;
                out.push((
                    AlertLevel::Warn,
                    format!(
                        "loss is rising (slope {:.4}/step over the last {n} steps): diverging",
                        cov / var
                    ),
                ));
            }
        }
        if losses.len() >= 50 && !self.plateau {
            let w = &losses[losses.len() - 50..];
            let mean = w.iter().sum::<f64>() / 50.0;
            let var = w.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / 50.0;
            if var < 1e-3 && step < steps {
                self.plateau = true;
                out.push((
                    AlertLevel::Info,
                    format!("loss plateaued at {mean:.4} (variance {var:.2e} over 50 steps)"),
                ));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rising_loss_and_a_plateau_alert_once_each() {
        let mut w = LossWatch::default();
        let rising: Vec<f64> = (0..100).map(|i| 2.0 + 0.05 * i as f64).collect();
        let a = w.observe(&rising, 100, 1000);
        assert_eq!(a.len(), 1);
        assert!(a[0].1.contains("rising"));
        assert!(w.observe(&rising, 101, 1000).is_empty(), "once");
        let flat = vec![1.5; 60];
        let mut w = LossWatch::default();
        let a = w.observe(&flat, 60, 1000);
        assert_eq!(a[0].0, AlertLevel::Info);
        assert!(w.observe(&flat, 60, 60).is_empty());
        let falling: Vec<f64> = (0..120).map(|i| 5.0 - 0.02 * i as f64).collect();
        assert!(LossWatch::default().observe(&falling, 120, 1000).is_empty());
    }
}
