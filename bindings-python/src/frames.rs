//! `gym_telemetry.FrameCapture`: which frames a wrapper captures, and the capture itself.
//!
//! The wrappers' per-step path is one native call (`EpisodeRecorder.step_bound`); capture
//! lives in the same call so it adds no Python frame. With no capture configured the step path
//! reads one atomic flag. With capture, on a chosen step the recorder calls `env.render()`
//! (an `rgb_array` env), copies the pixels out of the numpy array and hands them to the shim's
//! `FrameSender` (`telemetry_shim::frames`), which compresses and sends them on its own
//! thread; the step record carries the frame's `frame_ref`.
//!
//! Which steps: every step of an episode chosen by `episode_trigger` (a callable of the
//! episode index, as Gymnasium's `RecordVideo`; default its capped cubic schedule: episodes
//! 0, 1, 8, 27, ..., 729, then every 1000th), and every `every_k_steps`-th step of any episode
//! (step index 0, k, 2k, ...) for live viewing.

use numpy::{PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::{intern, prelude::*};
use std::sync::{Arc, Mutex};
use telemetry_shim::FrameSender;

/// RecordVideo's default episode trigger: perfect cubes below 1000, then every 1000th.
pub fn capped_cubic(episode: u64) -> bool {
    if episode < 1000 {
        let r = (episode as f64).cbrt().round() as u64;
        r * r * r == episode
    } else {
        episode.is_multiple_of(1000)
    }
}

/// Which frames a Gymnasium wrapper captures from `env.render()` (the env must be made with
/// `render_mode="rgb_array"`).
///
/// FrameCapture(every_k_steps=None, episode_trigger=None)
///
/// `episode_trigger(episode_index) -> bool` chooses whole episodes (None: RecordVideo's capped
/// cubic schedule, 0, 1, 8, 27, ..., then every 1000th; pass `lambda i: False` for none);
/// `every_k_steps` also captures steps 0, k, 2k, ... of every episode.
#[pyclass(frozen, module = "gym_telemetry._native")]
pub struct FrameCapture {
    every_k_steps: Option<u64>,
    episode_trigger: Option<Py<PyAny>>,
}

#[pymethods]
impl FrameCapture {
    #[new]
    #[pyo3(signature = (every_k_steps=None, episode_trigger=None))]
    fn new(every_k_steps: Option<u64>, episode_trigger: Option<Py<PyAny>>) -> PyResult<Self> {
        if every_k_steps == Some(0) {
            return Err(pyo3::exceptions::PyValueError::new_err(
                "every_k_steps must be at least 1 (or None)",
            ));
        }
        if let Some(t) = &episode_trigger {
            if !Python::attach(|py| t.bind(py).is_callable()) {
                return Err(pyo3::exceptions::PyTypeError::new_err(
                    "episode_trigger must be a callable of the episode index",
                ));
            }
        }
        Ok(FrameCapture {
            every_k_steps,
            episode_trigger,
        })
    }

    /// The every-k-steps setting (None: off).
    #[getter]
    fn every_k_steps(&self) -> Option<u64> {
        self.every_k_steps
    }

    /// Whether episode `episode_index` is captured whole.
    fn triggers(&self, py: Python<'_>, episode_index: u64) -> PyResult<bool> {
        match &self.episode_trigger {
            Some(t) => t.bind(py).call1((episode_index,))?.is_truthy(),
            None => Ok(capped_cubic(episode_index)),
        }
    }

    fn __repr__(&self) -> String {
        format!(
            "FrameCapture(every_k_steps={}, episode_trigger={})",
            self.every_k_steps
                .map_or("None".to_owned(), |k| k.to_string()),
            if self.episode_trigger.is_some() {
                "<callable>"
            } else {
                "capped_cubic"
            }
        )
    }

    fn __traverse__(&self, visit: pyo3::gc::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        if let Some(t) = &self.episode_trigger {
            visit.call(t)?;
        }
        Ok(())
    }
}

/// A recorder's capture: the settings, the env to render, and where frames go.
pub struct Capture {
    settings: Py<FrameCapture>,
    env: Py<PyAny>,
    render_fps: f64,
    sender: Arc<FrameSender>,
    /// None: the Telemetry's own agent id (what the shim stamps on a step without one).
    agent_id: Option<String>,
    /// (episode, whether it is captured whole), evaluated once per episode.
    current: Mutex<Option<(u64, bool)>>,
}

impl Capture {
    /// A capture of `env` into `sender`.
    pub fn new(
        settings: Py<FrameCapture>,
        env: Py<PyAny>,
        render_fps: f64,
        sender: Arc<FrameSender>,
        agent_id: Option<String>,
    ) -> Capture {
        Capture {
            settings,
            env,
            render_fps,
            sender,
            agent_id,
            current: Mutex::new(None),
        }
    }

    /// For the GC.
    pub fn visit(&self, visit: &pyo3::gc::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        visit.call(&self.settings)?;
        visit.call(&self.env)
    }

    /// Captures the frame of `(episode, step)` if the settings choose it; returns its
    /// `frame_ref`. The episode trigger's errors propagate (the caller counts them).
    pub fn maybe_capture(
        &self,
        py: Python<'_>,
        episode: u64,
        step: u64,
    ) -> PyResult<Option<String>> {
        let settings = self.settings.get();
        let whole = {
            let cached = *self.current.lock().unwrap_or_else(|p| p.into_inner());
            match cached {
                Some((e, t)) if e == episode => t,
                _ => {
                    let t = settings.triggers(py, episode)?;
                    *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some((episode, t));
                    t
                }
            }
        };
        let every = settings
            .every_k_steps
            .is_some_and(|k| step.is_multiple_of(k));
        if !(whole || every) {
            return Ok(None);
        }
        let frame = self.env.bind(py).call_method0(intern!(py, "render"))?;
        if frame.is_none() {
            return Err(pyo3::exceptions::PyValueError::new_err(
                "env.render() returned None: make the env with render_mode=\"rgb_array\"",
            ));
        }
        let (width, height, rgb, columns) = rgb_of(py, &frame, &self.sender)?;
        let agent = self.agent_id.as_deref();
        let r = if columns {
            self.sender
                .capture_columns(agent, episode, step, width, height, rgb, self.render_fps)
        } else {
            self.sender
                .capture(agent, episode, step, width, height, rgb, self.render_fps)
        }
        .map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(e.to_string()))?;
        Ok(Some(r))
    }
}

/// The pixels of an `rgb_array` render (H x W x 3 or x 4 uint8) as RGB bytes, and whether
/// they are column major. Gymnasium's pygame renderers return a transposed view of a W x H x 3
/// buffer: that buffer is copied as it is (one memcpy) and transposed on the sender thread,
/// not element by element here. The bytes go into a buffer the sender recycles
/// (`FrameSender::take_buffer`): a fresh 720 KB allocation per frame cost ~1 ms of page faults.
fn rgb_of(
    py: Python<'_>,
    frame: &Bound<'_, PyAny>,
    sender: &FrameSender,
) -> PyResult<(u32, u32, Vec<u8>, bool)> {
    let copy = |s: &[u8]| {
        let mut v = sender.take_buffer(s.len());
        v.extend_from_slice(s);
        v
    };
    if let Ok(arr) = frame.extract::<PyReadonlyArrayDyn<'_, u8>>() {
        if arr.ndim() == 3 && arr.shape()[2] == 3 && arr.as_slice().is_err() {
            let t = frame.call_method1(intern!(py, "transpose"), (1, 0, 2))?;
            let ta: PyReadonlyArrayDyn<'_, u8> = t.extract()?;
            if let Ok(s) = ta.as_slice() {
                let (h, w) = (arr.shape()[0], arr.shape()[1]);
                if let (Ok(width), Ok(height)) = (u32::try_from(w), u32::try_from(h)) {
                    return Ok((width, height, copy(s), true));
                }
            }
        }
    }
    rgb_rows(frame, copy).map(|(w, h, v)| (w, h, v, false))
}

/// Row-major RGB bytes of any H x W x 3/4 uint8 array (a contiguous RGB one through `copy`).
fn rgb_rows(
    frame: &Bound<'_, PyAny>,
    copy: impl Fn(&[u8]) -> Vec<u8>,
) -> PyResult<(u32, u32, Vec<u8>)> {
    let arr: PyReadonlyArrayDyn<'_, u8> = frame.extract().map_err(|_| {
        pyo3::exceptions::PyTypeError::new_err("env.render() did not return a uint8 numpy array")
    })?;
    let shape = arr.shape().to_vec();
    let bad = || {
        pyo3::exceptions::PyValueError::new_err(format!(
            "env.render() returned shape {shape:?}, expected (height, width, 3 or 4)"
        ))
    };
    let [h, w, c] = shape[..] else {
        return Err(bad());
    };
    if !(c == 3 || c == 4) {
        return Err(bad());
    }
    let (Ok(width), Ok(height)) = (u32::try_from(w), u32::try_from(h)) else {
        return Err(bad());
    };
    let rgb = match (c, arr.as_slice()) {
        (3, Ok(s)) => copy(s),
        (4, Ok(s)) => s.chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect(),
        _ => {
            let view = arr.as_array();
            let mut out = Vec::with_capacity(h * w * 3);
            for y in 0..h {
                for x in 0..w {
                    for ch in 0..3 {
                        out.push(view[[y, x, ch]]);
                    }
                }
            }
            out
        }
    };
    Ok((width, height, rgb))
}
