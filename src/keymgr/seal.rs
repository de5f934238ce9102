//! Sealing and unsealing the key store envelope: unlock slots (passphrase via Argon2id, recovery
//! key via HKDF) wrap a random store key; the store key encrypts the JSON body.

use zeroize::Zeroizing;

use super::store::KeyStore;
use super::{Unlock, VolumeError};
use crate::crypto::{Aead, KdfParams, Key256, argon2id, hkdf_subkey, random_array};
use crate::format::VolumeId;
use crate::format::keystore::{Envelope, Slot, SlotKind};

const PURPOSE_RECOVERY_SLOT: &str = "kmsfs/v1/recovery-slot";

/// The key that unlocks a slot, derived from what the user supplied.
fn slot_kek(slot: &Slot, unlock: &Unlock) -> Result<Option<Key256>, VolumeError> {
    match (slot.kind, unlock) {
        (SlotKind::Passphrase, Unlock::Passphrase(p)) => {
            let params = KdfParams {
                memory_kib: slot.memory_kib,
                iterations: slot.iterations,
                parallelism: slot.parallelism,
            };
            Ok(Some(argon2id(p, &slot.salt, &params)?))
        }
        (SlotKind::RecoveryKey, Unlock::RecoveryKey(k)) => {
            Ok(Some(hkdf_subkey(k, &slot.salt, PURPOSE_RECOVERY_SLOT)))
        }
        _ => Ok(None),
    }
}

/// A new slot wrapping `store_key` for `unlock`.
pub fn make_slot(
    volume: &VolumeId,
    unlock: &Unlock,
    params: &KdfParams,
    store_key: &Key256,
) -> Result<Slot, VolumeError> {
    let (kind, p) = match unlock {
        Unlock::Passphrase(_) => (SlotKind::Passphrase, *params),
        Unlock::RecoveryKey(_) => (
            SlotKind::RecoveryKey,
            KdfParams {
                memory_kib: 0,
                iterations: 0,
                parallelism: 0,
            },
        ),
    };
    let mut slot = Slot {
        kind,
        memory_kib: p.memory_kib,
        iterations: p.iterations,
        parallelism: p.parallelism,
        salt: random_array(),
        wrapped: [0; 60],
    };
    let kek = slot_kek(&slot, unlock)?.ok_or(VolumeError::WrongPassphrase)?;
    let sealed =
        Aead::new(&kek).seal_random(&Envelope::slot_aad(volume, &slot), store_key.expose());
    slot.wrapped.copy_from_slice(&sealed);
    Ok(slot)
}

/// Whether `slot` (of volume `volume`) opens with `unlock`.
pub fn slot_opens(volume: &VolumeId, slot: &Slot, unlock: &Unlock) -> bool {
    match slot_kek(slot, unlock) {
        Ok(Some(kek)) => Aead::new(&kek)
            .open(&Envelope::slot_aad(volume, slot), &slot.wrapped)
            .map(Zeroizing::new)
            .is_ok(),
        _ => false,
    }
}

/// Seals `store` into envelope bytes.
pub fn seal(store: &KeyStore, store_key: &Key256, slots: &[Slot], generation: u64) -> Vec<u8> {
    let body = Zeroizing::new(
        serde_json::to_vec(store).unwrap_or_else(|_| unreachable!("plain struct serializes")),
    );
    let mut env = Envelope {
        volume_id: store.volume_id,
        generation,
        key_count: store.keys.len() as u32,
        slots: slots.to_vec(),
        body_nonce: random_array(),
        body: Vec::new(),
    };
    let aad = env.header_bytes();
    let mut buf = body.to_vec();
    let tag = Aead::new(store_key).seal_in_place(&env.body_nonce, &aad, &mut buf);
    buf.extend_from_slice(&tag);
    env.body = buf;
    env.encode()
}

/// What unsealing produced.
pub struct Unsealed {
    pub store: KeyStore,
    pub store_key: Key256,
    pub envelope: Envelope,
}

/// Opens envelope bytes with `unlock`. `WrongPassphrase` when no slot accepts it;
/// `KeyStoreCorrupt` when the structure or the body fails.
pub fn unseal(bytes: &[u8], unlock: &Unlock) -> Result<Unsealed, VolumeError> {
    let env = Envelope::decode(bytes).map_err(|e| VolumeError::KeyStoreCorrupt(e.to_string()))?;
    let mut store_key = None;
    for slot in &env.slots {
        let Some(kek) = slot_kek(slot, unlock)? else {
            continue;
        };
        if let Ok(k) =
            Aead::new(&kek).open(&Envelope::slot_aad(&env.volume_id, slot), &slot.wrapped)
        {
            let k = Zeroizing::new(k);
            store_key = Key256::from_slice(&k);
            break;
        }
    }
    let store_key = store_key.ok_or(VolumeError::WrongPassphrase)?;
    if env.body.len() < 16 {
        return Err(VolumeError::KeyStoreCorrupt("body too short".into()));
    }
    let aad = env.header_bytes();
    let (ct, tag) = env.body.split_at(env.body.len() - 16);
    let mut buf = Zeroizing::new(ct.to_vec());
    let tag: &[u8; 16] = tag
        .try_into()
        .map_err(|_| VolumeError::KeyStoreCorrupt("tag".into()))?;
    Aead::new(&store_key)
        .open_in_place(&env.body_nonce, &aad, &mut buf, tag)
        .map_err(|_| VolumeError::KeyStoreCorrupt("body failed authentication".into()))?;
    let store: KeyStore = serde_json::from_slice(&buf)
        // The parser's message could quote decrypted bytes (key material): leave it out.
        .map_err(|_| VolumeError::KeyStoreCorrupt("the decrypted body does not parse".into()))?;
    if store.format != super::store::STORE_FORMAT {
        return Err(VolumeError::KeyStoreCorrupt(format!(
            "key store body format {} is not supported by this kmsfs (supports {})",
            store.format,
            super::store::STORE_FORMAT
        )));
    }
    if store.volume_id != env.volume_id {
        return Err(VolumeError::KeyStoreCorrupt(
            "volume id of body and envelope differ".into(),
        ));
    }
    if store.keys.len() as u32 != env.key_count {
        return Err(VolumeError::KeyStoreCorrupt(
            "key count of body and envelope differ".into(),
        ));
    }
    store
        .check_consistent()
        .map_err(VolumeError::KeyStoreCorrupt)?;
    Ok(Unsealed {
        store,
        store_key,
        envelope: env,
    })
}
