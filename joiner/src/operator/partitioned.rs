//! What Kafka mode needs of the operator beyond `push`: the watermark comes from
//! outside (JOIN.md: per input partition, the minimum of them), and messages refused
//! before parsing (oversized) are counted and dead-lettered like malformed lines.

use super::{DeadLetter, Joiner};
use odl_proto::event::StreamKind;

/// Bytes of a refused message kept in its dead letter (an oversized message is cut).
pub const DEAD_LETTER_MAX_LINE: usize = 64 * 1024;

impl Joiner {
    /// From now on only [`Joiner::advance_watermark`] moves the watermark; events are
    /// late against it but do not raise it.
    pub fn use_external_watermark(&mut self) {
        self.external_watermark = true;
    }

    /// Raises the watermark to `wm` (never lowers it) and decides what it passed.
    pub fn advance_watermark(&mut self, wm: i64) {
        if wm > self.watermark {
            self.watermark = wm;
            self.fire_timers();
        }
    }

    /// A message refused before parsing: counted `malformed`, dead-lettered with
    /// `reason` and at most [`DEAD_LETTER_MAX_LINE`] bytes of it.
    pub fn reject(&mut self, reason: String, stream: Option<StreamKind>, line: &[u8]) {
        self.stats.malformed += 1;
        let line = line[..line.len().min(DEAD_LETTER_MAX_LINE)].to_vec();
        self.dead.push_back(DeadLetter { reason, stream, line });
    }
}
