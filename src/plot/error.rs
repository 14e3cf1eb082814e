//! What cannot be plotted: no rows, a size outside what can be drawn, a
//! smoothing window of nothing.

/// The smallest and largest plot sides, in pixels.
pub const MIN_SIZE: (u32, u32) = (480, 360);
pub const MAX_SIDE: u32 = 4096;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PlotError {
    #[error("the metrics log has no step rows to plot")]
    NoSteps,
    #[error(
        "a plot of {width}x{height} pixels is outside what can be drawn: from {}x{} to {MAX_SIDE}x{MAX_SIDE}",
        MIN_SIZE.0,
        MIN_SIZE.1
    )]
    Size { width: u32, height: u32 },
    #[error("a smoothing window of 0 steps: give 1 (none) or more")]
    Smooth,
}

/// Refuses a plot size outside [`MIN_SIZE`]..=[`MAX_SIDE`].
pub fn check_size(width: u32, height: u32) -> Result<(), PlotError> {
    if width < MIN_SIZE.0 || height < MIN_SIZE.1 || width > MAX_SIDE || height > MAX_SIDE {
        return Err(PlotError::Size { width, height });
    }
    Ok(())
}
