//! Durable results: the store of kept files on a real S3 API server (moto), as replicas share it.

use bytes::Bytes;
use futures_util::StreamExt;
use mjgate::artifacts::store::{BlobId, BlobStore, MediaKind, S3Bucket};

use crate::support::*;

fn bucket(server: &S3Server, name: &str) -> S3Bucket {
    S3Bucket {
        endpoint: Some(server.endpoint()),
        bucket: name.to_owned(),
        region: "us-east-1".to_owned(),
        prefix: Some("mjgate".to_owned()),
        path_style: true,
        // moto takes any key; production reads AWS_ACCESS_KEY_ID and the rest from the environment.
        access_key: Some(("test".to_owned(), "test".to_owned())),
    }
}

fn body(
    data: &[u8],
    part: usize,
) -> impl futures_util::Stream<Item = Result<Bytes, String>> + Unpin {
    let parts: Vec<Result<Bytes, String>> = data
        .chunks(part)
        .map(|chunk| Ok(Bytes::copy_from_slice(chunk)))
        .collect();
    futures_util::stream::iter(parts)
}

async fn read(blobs: &BlobStore, id: &BlobId, range: Option<std::ops::Range<u64>>) -> Vec<u8> {
    let mut stream = blobs.read(id, range).await.expect("kept");
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_one_bucket_keep_a_file_once_and_each_serves_it_whole_or_by_range() {
    let server = S3Server::start();
    server.create_bucket("results");
    let a = BlobStore::s3(&bucket(&server, "results"), 64 << 20).unwrap();
    let b = BlobStore::s3(&bucket(&server, "results"), 64 << 20).unwrap();
    // 12 MiB: more than two upload parts, streamed.
    let video: Vec<u8> = (0..12u32 << 20).map(|i| (i % 251) as u8).collect();
    let (id, len) = a.put(body(&video, 1 << 20), MediaKind::Mp4).await.unwrap();
    assert_eq!(len, video.len() as u64);
    assert_eq!(
        id,
        BlobId::new(*blake3::hash(&video).as_bytes(), MediaKind::Mp4)
    );
    // The other replica serves it, whole and by range, without downloading it again.
    assert_eq!(b.len(&id).await, Some(video.len() as u64));
    assert_eq!(read(&b, &id, None).await, video);
    assert_eq!(read(&b, &id, Some(5..1029)).await, &video[5..1029]);
    // The same file kept by the other replica (another credential's task) is the same blob.
    let (again, _) = b.put(body(&video, 3 << 20), MediaKind::Mp4).await.unwrap();
    assert_eq!(again, id);
    // Past the size cap: refused.
    let small = BlobStore::s3(&bucket(&server, "results"), 1 << 20).unwrap();
    assert!(
        small
            .put(body(&video, 1 << 20), MediaKind::Mp4)
            .await
            .is_err()
    );
    let unknown = BlobId::new([7; 32], MediaKind::Png);
    assert!(a.read(&unknown, None).await.is_none());
    assert_eq!(a.len(&unknown).await, None);
}
