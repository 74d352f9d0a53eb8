//! tend's patch: tokio's mpsc channels with each message boxed.
//!
//! A tokio channel allocates its first block of 32 slots when it is made,
//! each slot the size of the message: 32 × 136 bytes for `client::Msg`.
//! A kept-open connection has five such channels and one per open channel,
//! ≈ 18 KiB that sit empty between reconciles. Boxed, a slot is 8 bytes;
//! a message costs one small allocation while it is queued.
//!
//! Same names and methods as the tokio items this crate used, so only the
//! `use` lines change.

use std::task::{Context, Poll};

use tokio::sync::mpsc as t;
pub use tokio::sync::mpsc::error;
use tokio::sync::mpsc::error::{SendError, TryRecvError, TrySendError};

pub struct Sender<T>(t::Sender<Box<T>>);
pub struct Receiver<T>(t::Receiver<Box<T>>);
pub struct UnboundedSender<T>(t::UnboundedSender<Box<T>>);
pub struct UnboundedReceiver<T>(t::UnboundedReceiver<Box<T>>);
pub struct OwnedPermit<T>(t::OwnedPermit<Box<T>>);

pub fn channel<T>(buffer: usize) -> (Sender<T>, Receiver<T>) {
    let (s, r) = t::channel(buffer);
    (Sender(s), Receiver(r))
}

pub fn unbounded_channel<T>() -> (UnboundedSender<T>, UnboundedReceiver<T>) {
    let (s, r) = t::unbounded_channel();
    (UnboundedSender(s), UnboundedReceiver(r))
}

fn unbox_send<T>(e: SendError<Box<T>>) -> SendError<T> {
    SendError(*e.0)
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        Sender(self.0.clone())
    }
}

impl<T> Clone for UnboundedSender<T> {
    fn clone(&self) -> Self {
        UnboundedSender(self.0.clone())
    }
}

impl<T> std::fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl<T> std::fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl<T> std::fmt::Debug for UnboundedSender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl<T> std::fmt::Debug for UnboundedReceiver<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl<T> Sender<T> {
    pub async fn send(&self, value: T) -> Result<(), SendError<T>> {
        self.0.send(Box::new(value)).await.map_err(unbox_send)
    }

    pub fn try_send(&self, value: T) -> Result<(), TrySendError<T>> {
        self.0.try_send(Box::new(value)).map_err(|e| match e {
            TrySendError::Full(v) => TrySendError::Full(*v),
            TrySendError::Closed(v) => TrySendError::Closed(*v),
        })
    }

    pub fn is_closed(&self) -> bool {
        self.0.is_closed()
    }

    pub async fn reserve_owned(self) -> Result<OwnedPermit<T>, SendError<()>> {
        self.0.reserve_owned().await.map(OwnedPermit)
    }
}

impl<T> OwnedPermit<T> {
    pub fn send(self, value: T) -> Sender<T> {
        Sender(self.0.send(Box::new(value)))
    }
}

impl<T> Receiver<T> {
    pub async fn recv(&mut self) -> Option<T> {
        self.0.recv().await.map(|b| *b)
    }

    pub fn try_recv(&mut self) -> Result<T, TryRecvError> {
        self.0.try_recv().map(|b| *b)
    }

    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| *b))
    }

    pub fn close(&mut self) {
        self.0.close()
    }
}

impl<T> UnboundedSender<T> {
    pub fn send(&self, value: T) -> Result<(), SendError<T>> {
        self.0.send(Box::new(value)).map_err(unbox_send)
    }
}

impl<T> UnboundedReceiver<T> {
    pub async fn recv(&mut self) -> Option<T> {
        self.0.recv().await.map(|b| *b)
    }

    pub fn try_recv(&mut self) -> Result<T, TryRecvError> {
        self.0.try_recv().map(|b| *b)
    }

    pub fn close(&mut self) {
        self.0.close()
    }
}
