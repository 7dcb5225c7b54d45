//! The terminal loop: sets the terminal up (raw mode, alternate screen, and a panic hook that
//! restores both — ratatui's own), feeds events from the I/O layer through [`App::update`], hands
//! the commands back to the I/O layer and redraws at most [`MAX_FPS`] times a second, never once
//! per record. The terminal is restored on every way out.

use std::time::{Duration, Instant, SystemTime};

use crossterm::event::{Event as TermEvent, EventStream};
use futures::StreamExt as _;
use ratatui::DefaultTerminal;
use tokio::sync::mpsc;

use crate::{
    app::{App, Command, Event},
    client::{ClientConfig, Clients},
    error::ViewerError,
    io::{EventSink, Io, EVENT_CHANNEL},
    views,
};

/// Most redraws per second.
pub const MAX_FPS: u32 = 20;
/// Most events applied between two redraws.
pub const MAX_EVENTS_PER_FRAME: usize = 512;

/// Runs the terminal UI until the user quits.
pub async fn run_tui(config: &ClientConfig) -> Result<(), ViewerError> {
    let clients = Clients::lazy(config)?;
    let (sink, rx) = EventSink::channel(EVENT_CHANNEL);
    let mut terminal = ratatui::try_init()?;
    let result = event_loop(&mut terminal, clients, sink, rx, &config.endpoint).await;
    ratatui::restore();
    result
}

async fn event_loop(
    terminal: &mut DefaultTerminal,
    clients: Clients,
    sink: EventSink,
    mut rx: mpsc::Receiver<Event>,
    endpoint: &str,
) -> Result<(), ViewerError> {
    let mut io = Io::start(clients, sink.clone());
    let keys = tokio::spawn(read_terminal(sink));
    let mut app = App::new(endpoint, Instant::now(), SystemTime::now());
    let frame_every = Duration::from_secs(1) / MAX_FPS;
    terminal.draw(|f| views::draw(f, &app))?;
    let mut last_draw = Instant::now();
    let mut result = Ok(());
    'outer: while let Some(first) = rx.recv().await {
        let mut urgent = matches!(first, Event::Key(_) | Event::Resize);
        let mut commands = app.update(first);
        for _ in 0..MAX_EVENTS_PER_FRAME {
            let Ok(ev) = rx.try_recv() else { break };
            urgent |= matches!(ev, Event::Key(_) | Event::Resize);
            commands.extend(app.update(ev));
        }
        for c in commands {
            if c == Command::Quit {
                break 'outer;
            }
            io.execute(c);
        }
        if (urgent || last_draw.elapsed() >= frame_every) && app.take_dirty() {
            if let Err(e) = terminal.draw(|f| views::draw(f, &app)) {
                result = Err(e.into());
                break;
            }
            last_draw = Instant::now();
        }
    }
    keys.abort();
    drop(io);
    result
}

async fn read_terminal(sink: EventSink) {
    let mut events = EventStream::new();
    while let Some(ev) = events.next().await {
        let event = match ev {
            Ok(TermEvent::Key(k)) => Event::Key(k),
            Ok(TermEvent::Resize(..)) => Event::Resize,
            Ok(_) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "terminal input failed");
                return;
            }
        };
        if !sink.deliver(event).await {
            return;
        }
    }
}
