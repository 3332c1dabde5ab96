//! The paper's recurrent MNIST models (METHOD.md sections 1 and 5): each 28x28 image is read as
//! 28 time steps of 28 pixels by two stacked LSTM layers (hidden 128 for LSTM-a, 256 for
//! LSTM-b), every sequence starting from zero states; a dense, unmasked FC layer maps the last
//! step's hidden state to the 10 classes. In DST the eight gate matrices of each LSTM layer are
//! masked; the head never is.

use crate::gpu::{Gpu, Result};
use crate::nn::linear::Linear;
use crate::nn::lstm::{Lstm, LstmInput, LstmOutput};
use crate::nn::{ArenaBuilder, Init, Layer};

const STEPS: usize = 28;
const PIXELS: usize = 28;

fn lstm(
    gpu: &Gpu,
    ab: &mut ArenaBuilder,
    masked: bool,
    hidden: usize,
) -> Result<Vec<Box<dyn Layer>>> {
    let ids1 = Lstm::declare(ab, "lstm1", PIXELS, hidden, masked);
    let ids2 = Lstm::declare(ab, "lstm2", hidden, hidden, masked);
    // The head: U(-0.1, 0.1) weights and zero bias, as the paper's code initialises it.
    let w = ab.param("fc.weight", &[10, hidden], Init::Uniform(0.1));
    let b = ab.param("fc.bias", &[10], Init::Zeros);
    let layers: Vec<Box<dyn Layer>> = vec![
        Box::new(Lstm::new(
            gpu,
            "lstm1",
            PIXELS,
            hidden,
            STEPS,
            LstmInput::BatchMajor,
            LstmOutput::Sequence,
            ids1,
        )?),
        Box::new(Lstm::new(
            gpu,
            "lstm2",
            hidden,
            hidden,
            STEPS,
            LstmInput::TimeMajor,
            LstmOutput::Last,
            ids2,
        )?),
        Box::new(Linear::new(gpu, "fc", hidden, 10, (w, b, None))?),
    ];
    Ok(layers)
}

/// LSTM-a: two LSTM layers of 128 hidden units.
pub fn lstm_a(gpu: &Gpu, ab: &mut ArenaBuilder, masked: bool) -> Result<Vec<Box<dyn Layer>>> {
    lstm(gpu, ab, masked, 128)
}

/// LSTM-b: two LSTM layers of 256 hidden units.
pub fn lstm_b(gpu: &Gpu, ab: &mut ArenaBuilder, masked: bool) -> Result<Vec<Box<dyn Layer>>> {
    lstm(gpu, ab, masked, 256)
}
