//! The learning-rate schedule: linear warm-up to the peak, then cosine decay to a floor.

/// Linear warm-up to 1, then cosine decay to `min_ratio` at `total`.
pub fn lr_factor(step: u64, warmup: u64, total: u64, min_ratio: f64) -> f64 {
    if warmup > 0 && step < warmup {
        return (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1) as f64;
    let progress = ((step - warmup.min(step)) as f64 / span).min(1.0);
    min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays_to_the_floor() {
        assert!((lr_factor(0, 10, 100, 0.1) - 0.1).abs() < 1e-12);
        assert!((lr_factor(9, 10, 100, 0.1) - 1.0).abs() < 1e-12);
        assert!((lr_factor(10, 10, 100, 0.1) - 1.0).abs() < 1e-12);
        assert!((lr_factor(55, 10, 100, 0.1) - 0.55).abs() < 1e-12);
        assert!((lr_factor(100, 10, 100, 0.1) - 0.1).abs() < 1e-12);
    }
}
