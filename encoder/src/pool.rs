//! Pools of ONNX Runtime sessions, one pool per tower: running a session needs exclusive
//! access, so concurrent batches each take their own.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use ort::session::Session;

use crate::error::EncoderError;
use crate::runtime::{self, Device};

#[derive(Debug, Clone)]
pub struct EncoderConfig {
    /// Sessions per tower: how many batches can run at once.
    pub sessions: usize,
    /// Threads each session uses inside one run.
    pub intra_threads: usize,
    pub device: Device,
}

impl EncoderConfig {
    /// `sessions` sessions sharing the machine's cores: cores / sessions threads each.
    pub fn with_sessions(sessions: usize) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let sessions = sessions.max(1);
        Self {
            sessions,
            intra_threads: (cores / sessions).max(1),
            device: Device::Cpu,
        }
    }
}

impl Default for EncoderConfig {
    /// Sessions × threads fill the machine's cores: on small machines one thread per
    /// session (batches run side by side), on large ones a few sessions of several threads.
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::with_sessions((cores / 4).clamp(2, 8))
    }
}

pub(crate) struct Pool {
    pub(crate) sessions: Vec<Mutex<Session>>,
    next: AtomicUsize,
}

impl Pool {
    pub(crate) fn load(path: &Path, cfg: &EncoderConfig) -> Result<(Self, Device), EncoderError> {
        let env = runtime::environment()?;
        let wanted = runtime::usable_device(cfg.device);
        // Where the sessions really run: the CPU as soon as one of them could not use CUDA.
        let device = std::cell::Cell::new(wanted);
        let open = || -> Result<Session, String> {
            let e = |e: &dyn std::fmt::Display| e.to_string();
            let builder = Session::builder(&env)
                .map_err(|x| e(&x))?
                .with_intra_threads(cfg.intra_threads.max(1))
                .map_err(|x| e(&x))?
                .with_inter_threads(1)
                .map_err(|x| e(&x))?;
            let (mut builder, got) = runtime::with_device(builder, wanted)?;
            if got == Device::Cpu {
                device.set(Device::Cpu);
            }
            builder.commit_from_file(path).map_err(|x| e(&x))
        };
        let sessions = (0..cfg.sessions.max(1))
            .map(|_| open().map(Mutex::new))
            .collect::<Result<Vec<_>, String>>()
            .map_err(|e| EncoderError::Model(format!("{}: {e}", path.display())))?;
        Ok((
            Self {
                sessions,
                next: AtomicUsize::new(0),
            },
            device.get(),
        ))
    }

    /// Runs `f` on session `worker` when given (a batch worker owns one session), else
    /// on a free session if there is one, else on the next in turn.
    pub(crate) fn with<T>(
        &self,
        worker: Option<usize>,
        f: impl FnOnce(&mut Session) -> Result<T, EncoderError>,
    ) -> Result<T, EncoderError> {
        if let Some(i) = worker {
            let i = i % self.sessions.len();
            return f(&mut self.sessions[i].lock().unwrap_or_else(|p| p.into_inner()));
        }
        for s in &self.sessions {
            if let Ok(mut guard) = s.try_lock() {
                return f(&mut guard);
            }
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.sessions.len();
        let mut guard = self.sessions[i].lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    pub(crate) fn session(&self) -> std::sync::MutexGuard<'_, Session> {
        self.sessions[0].lock().unwrap_or_else(|p| p.into_inner())
    }
}
