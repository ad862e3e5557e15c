//! foca's [`Codec`] over bincode 2 (foca 2 ships none): SWIM headers and member updates encoded
//! with the same bounded configuration as every other peerfence message.

use crate::envelope::wire_config;
use crate::ids::Ident;
use bytes::{Buf, BufMut};
use foca::{Codec, Header, Member};

/// Encoding or decoding a SWIM item failed.
#[derive(Debug, thiserror::Error)]
pub enum SwimCodecError {
    /// The item does not fit the space foca left in its packet.
    #[error("SWIM item of {needed} bytes does not fit the {available} bytes left in the packet")]
    NoSpace {
        /// Encoded size.
        needed: usize,
        /// Room left.
        available: usize,
    },
    /// bincode refused to encode.
    #[error("cannot encode SWIM item: {0}")]
    Encode(String),
    /// The input is not a valid item.
    #[error("malformed SWIM item: {0}")]
    Decode(String),
}

/// The codec peerfence gives foca.
#[derive(Debug, Default, Clone, Copy)]
pub struct SwimCodec;

impl SwimCodec {
    fn put<T: serde::Serialize>(value: &T, mut buf: impl BufMut) -> Result<(), SwimCodecError> {
        // Encode aside first: foca requires that a failed encode leaves the buffer untouched.
        let bytes = bincode::serde::encode_to_vec(value, wire_config())
            .map_err(|e| SwimCodecError::Encode(e.to_string()))?;
        if buf.remaining_mut() < bytes.len() {
            return Err(SwimCodecError::NoSpace {
                needed: bytes.len(),
                available: buf.remaining_mut(),
            });
        }
        buf.put_slice(&bytes);
        Ok(())
    }

    fn take<T: serde::de::DeserializeOwned>(mut buf: impl Buf) -> Result<T, SwimCodecError> {
        // foca hands us contiguous data, so the first chunk is all of it.
        let (value, used) = bincode::serde::decode_from_slice(buf.chunk(), wire_config())
            .map_err(|e| SwimCodecError::Decode(e.to_string()))?;
        buf.advance(used);
        Ok(value)
    }
}

impl Codec<Ident> for SwimCodec {
    type Error = SwimCodecError;

    fn encode_header(
        &mut self,
        header: &Header<Ident>,
        buf: impl BufMut,
    ) -> Result<(), Self::Error> {
        Self::put(header, buf)
    }

    fn decode_header(&mut self, buf: impl Buf) -> Result<Header<Ident>, Self::Error> {
        Self::take(buf)
    }

    fn encode_member(
        &mut self,
        member: &Member<Ident>,
        buf: impl BufMut,
    ) -> Result<(), Self::Error> {
        Self::put(member, buf)
    }

    fn decode_member(&mut self, buf: impl Buf) -> Result<Member<Ident>, Self::Error> {
        Self::take(buf)
    }
}
