//! # gym-telemetry-viewer
//!
//! A terminal viewer of gym-telemetry runs, live and stored, over the daemon's `Query` and
//! `RunControl` gRPC services. It replaces the predecessor's Qt tabs: a Runs list, per agent of
//! an open run a Grid (ANSI render), Raw (last 100 steps) and Episodes view, a Human Replay of
//! manual play and frame-by-frame replay of finished runs.
//!
//! The crate is split so that almost everything is testable without a terminal or a daemon:
//!
//! - [`app`]: pure state and event handling (`App::update(Event) -> Vec<Command>`).
//! - [`views`]: pure rendering (`views::draw(frame, &app)`), tested with ratatui's `TestBackend`.
//! - [`render_hint`]: ANSI render hints and observations to styled text.
//! - [`io`]: the thin async layer that turns commands into gRPC streams and feeds their messages
//!   back through one bounded channel, counting what it drops.
//! - [`client`]: endpoint, auth header and the generated clients.
//! - [`once`]: the `--once` text snapshot, a plain async function over the clients.
//! - [`tui`]: the terminal loop (setup, restore, panic hook, frame pacing).

pub mod app;
pub mod cli;
pub mod client;
pub mod error;
pub mod io;
pub mod once;
pub mod render_hint;
pub mod tui;
pub mod views;

pub use app::{App, Command, Event};
pub use cli::Cli;
pub use client::{ClientConfig, Clients};
pub use error::ViewerError;
