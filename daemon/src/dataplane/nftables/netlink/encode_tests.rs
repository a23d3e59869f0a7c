//! Byte fixtures derived by hand from linux/netlink.h, nfnetlink.h and
//! nf_tables.h (little-endian host: netlink headers are host order).

use super::*;

fn elem(pod: [u8; 4], dst: [u8; 4], timeout_ms: Option<u64>) -> Elem {
    Elem {
        key: concat_key(&[&pod, &dst]),
        timeout_ms,
    }
}

const BEGIN_SEQ_100: [u8; 20] = [
    0x14, 0, 0, 0, // nlmsg_len 20
    0x10, 0, // NFNL_MSG_BATCH_BEGIN
    0x01, 0, // NLM_F_REQUEST
    100, 0, 0, 0, // seq
    0, 0, 0, 0, // pid
    0, 0, 0x00, 0x0a, // AF_UNSPEC, v0, htons(NFNL_SUBSYS_NFTABLES)
];

#[test]
fn concatenated_ipv4_key_is_both_addresses_in_network_order() {
    assert_eq!(
        concat_key(&[&[10, 244, 0, 5], &[203, 0, 113, 1]]),
        vec![10, 244, 0, 5, 203, 0, 113, 1]
    );
    // Parts shorter than a register are padded to 4 bytes each.
    assert_eq!(concat_key(&[&[0, 80], &[1]]), vec![0, 80, 0, 0, 1, 0, 0, 0]);
}

#[cfg(target_endian = "little")]
#[test]
fn one_element_with_timeout_encodes_as_the_uapi_lays_it_out() {
    let elems = [elem([10, 244, 0, 5], [203, 0, 113, 1], Some(35_000))];
    let (bytes, acked) = batch(
        100,
        &[SetOp {
            op: Op::Add,
            table: "veil",
            set: "d1",
            elems: &elems,
        }],
    )
    .unwrap();
    let mut want = BEGIN_SEQ_100.to_vec();
    want.extend_from_slice(&[
        76, 0, 0, 0, // nlmsg_len
        0x0c, 0x0a, // NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWSETELEM
        0x05, 0x04, // REQUEST | ACK | CREATE
        101, 0, 0, 0, 0, 0, 0, 0, // seq, pid
        1, 0, 0, 0, // NFPROTO_INET, v0, res_id 0
        9, 0, 1, 0, b'v', b'e', b'i', b'l', 0, 0, 0, 0, // LIST_TABLE "veil\0" + pad
        7, 0, 2, 0, b'd', b'1', 0, 0, // LIST_SET "d1\0" + pad
        36, 0, 0x03, 0x80, // LIST_ELEMENTS, nested
        32, 0, 0x01, 0x80, // LIST_ELEM, nested
        16, 0, 0x01, 0x80, // SET_ELEM_KEY, nested
        12, 0, 1, 0, 10, 244, 0, 5, 203, 0, 113, 1, // DATA_VALUE
        12, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0x88, 0xb8, // SET_ELEM_TIMEOUT be64 35000 ms
    ]);
    want.extend_from_slice(&[
        0x14, 0, 0, 0, 0x11, 0, 0x01, 0, 102, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x00, 0x0a,
    ]);
    assert_eq!(bytes, want);
    assert_eq!(
        acked,
        Acked {
            first: 101,
            count: 1
        }
    );
}

#[cfg(target_endian = "little")]
#[test]
fn delete_has_no_create_flag_and_no_timeout() {
    let elems = [elem([10, 244, 0, 5], [203, 0, 113, 1], None)];
    let (bytes, _) = batch(
        7,
        &[SetOp {
            op: Op::Delete,
            table: "veil",
            set: "d1",
            elems: &elems,
        }],
    )
    .unwrap();
    let m = &bytes[20..];
    assert_eq!(&m[0..4], &[64, 0, 0, 0]); // 76 - 12 bytes of timeout
    assert_eq!(&m[4..8], &[0x0e, 0x0a, 0x05, 0x00]); // DELSETELEM, REQUEST | ACK
    assert_eq!(&m[40..44], &[24, 0, 0x03, 0x80]);
}

#[test]
fn one_message_per_set_and_each_is_acked() {
    let a = [elem([10, 244, 0, 5], [203, 0, 113, 1], Some(1000))];
    let b = [
        elem([10, 244, 0, 6], [203, 0, 113, 2], Some(1000)),
        elem([10, 244, 0, 6], [203, 0, 113, 3], Some(1000)),
    ];
    let ops = [
        SetOp {
            op: Op::Add,
            table: "veil",
            set: "d1",
            elems: &a,
        },
        SetOp {
            op: Op::Add,
            table: "veil",
            set: "d2",
            elems: &b,
        },
    ];
    let (bytes, acked) = batch(u32::MAX - 1, &ops).unwrap();
    assert_eq!(
        acked,
        Acked {
            first: u32::MAX,
            count: 2
        }
    );
    assert!(acked.contains(0) && !acked.contains(1) && acked.is_frame(1));
    // Messages walk the buffer exactly: BEGIN, 2 set messages, END.
    let mut n = 0;
    let mut rest = &bytes[..];
    while !rest.is_empty() {
        let len = u32::from_ne_bytes(rest[..4].try_into().unwrap()) as usize;
        assert_eq!(len % 4, 0);
        rest = &rest[len..];
        n += 1;
    }
    assert_eq!(n, 4);
}

#[test]
fn long_lists_are_split_under_the_16_bit_attribute_length() {
    let many: Vec<Elem> = (0..5000u32)
        .map(|i| elem([10, 244, 0, 5], i.to_be_bytes(), Some(30_000)))
        .collect();
    let (bytes, acked) = batch(
        1,
        &[SetOp {
            op: Op::Add,
            table: "veil",
            set: "d1",
            elems: &many,
        }],
    )
    .unwrap();
    // 32 bytes an element: 2047 fit in one list.
    assert_eq!(acked, Acked { first: 2, count: 3 });
    assert!(bytes.len() > 5000 * 32);
}

#[test]
fn bad_names_and_keys_are_refused_not_encoded() {
    let e = [elem([1, 2, 3, 4], [5, 6, 7, 8], None)];
    let op = |set: &'static str| SetOp {
        op: Op::Add,
        table: "veil",
        set,
        elems: &e,
    };
    assert!(matches!(batch(1, &[op("")]), Err(EncodeError::BadName(_))));
    assert!(matches!(
        batch(1, &[op("a\0b")]),
        Err(EncodeError::BadName(_))
    ));
    let long = "x".repeat(256);
    let o = SetOp {
        op: Op::Add,
        table: "veil",
        set: &long,
        elems: &e,
    };
    assert!(matches!(batch(1, &[o]), Err(EncodeError::BadName(_))));
    let big = [Elem {
        key: vec![0; 65],
        timeout_ms: None,
    }];
    let o = SetOp {
        op: Op::Add,
        table: "veil",
        set: "d1",
        elems: &big,
    };
    assert!(matches!(
        batch(1, &[o]),
        Err(EncodeError::BadKey { len: 65, .. })
    ));
}

#[cfg(target_endian = "little")]
#[test]
fn acks_read_errors_by_sequence_and_skip_other_messages() {
    let mut buf = Vec::new();
    // NLMSG_ERROR, seq 101, error 0 (+ the echoed 16-byte header).
    buf.extend_from_slice(&[36, 0, 0, 0, 2, 0, 0x00, 0x01, 101, 0, 0, 0, 0, 0, 0, 0]);
    buf.extend_from_slice(&0i32.to_ne_bytes());
    buf.extend_from_slice(&[0; 16]);
    // NLMSG_DONE (type 3), skipped.
    buf.extend_from_slice(&[20, 0, 0, 0, 3, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    // NLMSG_ERROR, seq 102, -ENOENT.
    buf.extend_from_slice(&[36, 0, 0, 0, 2, 0, 0x00, 0x01, 102, 0, 0, 0, 0, 0, 0, 0]);
    buf.extend_from_slice(&(-2i32).to_ne_bytes());
    buf.extend_from_slice(&[0; 16]);
    assert_eq!(
        acks(&buf),
        vec![Ack { seq: 101, errno: 0 }, Ack { seq: 102, errno: 2 }]
    );
}

#[test]
fn acks_of_any_bytes_never_panic() {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for len in 0..300 {
        let buf: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x & 0xff) as u8
            })
            .collect();
        let _ = acks(&buf);
    }
    // A header claiming less than a header, or more than the buffer.
    assert!(acks(&[4, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]).is_empty());
    assert!(acks(&[255, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]).is_empty());
    // An error message too short for its error field.
    assert!(acks(&[16, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]).is_empty());
}
