//! `cinder train`: a classifier on bundled data (the perceptron on the
//! digits, or a convolutional network); see `cnn.rs`.

use cinder::Result;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum TrainCommand {
    /// A multilayer perceptron (64-128-10) on the bundled 8x8 handwritten
    /// digits, into runs/mlp.
    Mlp(crate::cnn::TrainMlp),
    /// A convolutional network (the LeNet-style one, or --arch resnet) on the
    /// bundled digits, real MNIST (--data mnist-5k) or MNIST files (--mnist
    /// DIR), with checkpoints, curves and a confusion matrix, into runs/cnn.
    Cnn(crate::cnn::TrainCnn),
    /// A recurrent network (LSTM, GRU or RNN) on a sequence task: the
    /// shipped MNIST digits read row by row (--task mnist-rows), into
    /// runs/rnn.
    Rnn(crate::rnn::TrainRnn),
    /// A DCGAN (or with --conditional one told the digit) on real MNIST
    /// digits (or the 8x8 digits), with a grid of samples after every epoch,
    /// into runs/gan.
    Gan(crate::gan::TrainGan),
    /// A U-Net that colours each pixel of 96x96 scenes of real MNIST
    /// digits by its digit, with held-out IoU per class and pictures of its
    /// masks after every epoch, into runs/segment.
    Segment(crate::segment::TrainSegment),
    /// A CenterNet-style detector that boxes each digit of 96x96 scenes of
    /// real MNIST digits, with held-out mAP and pictures of its boxes after
    /// every epoch, into runs/detect.
    Detect(crate::detect::TrainDetect),
}

pub fn run(cmd: TrainCommand) -> Result<()> {
    match cmd {
        TrainCommand::Mlp(args) => crate::cnn::train_mlp(args),
        TrainCommand::Cnn(args) => crate::cnn::train_cnn(args),
        TrainCommand::Rnn(args) => crate::rnn::train_rnn(args),
        TrainCommand::Gan(args) => crate::gan::train_gan(args),
        TrainCommand::Segment(args) => crate::segment::train_segment(args),
        TrainCommand::Detect(args) => crate::detect::train_detect(args),
    }
}
