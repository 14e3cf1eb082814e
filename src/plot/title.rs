//! The line across the top of a plot.

use super::canvas::{Anchor, Canvas};
use super::panel::Style;
use super::theme;

/// The line across the top of a plot: `title` on the left (cut from the
/// left to fit), `summary` on the right, both `pad` in from the edges.
/// Returns where what comes below it starts.
pub(super) fn title_bar(c: &mut Canvas, st: &Style, title: &str, summary: &str, pad: i32) -> i32 {
    let width = c.img.width() as i32;
    let title_y = pad + st.title.height() / 2;
    let right = c.text(summary, st.tick, (width - pad, title_y), Anchor::MiddleRight, false, theme::MUTED);
    let room = ((right.x0 - 2 * pad - pad) / st.title.size("m").0).max(8) as usize;
    c.text(&fit(title, room), st.title, (pad, title_y), Anchor::MiddleLeft, false, theme::TEXT);
    pad + st.title.height() + pad
}

/// `text` cut to `room` characters from the left (a URL's end says most).
fn fit(text: &str, room: usize) -> String {
    let n = text.chars().count();
    if n <= room {
        return text.to_string();
    }
    let tail: String = text.chars().skip(n + 3 - room).collect();
    format!("...{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_titles_are_cut_from_the_left() {
        assert_eq!(fit("s3://bucket/runs/abc", 40), "s3://bucket/runs/abc");
        assert_eq!(fit("s3://bucket/runs/abcdef", 12), "...ns/abcdef");
    }
}
