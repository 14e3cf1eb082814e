include!("src/build/libtorch_link.rs");
include!("src/build/torch_cuda.rs");

fn main() -> Result<(), Box<dyn std::error::Error>> {
    link_libtorch();
    record_torch_cuda();
    println!("cargo:rerun-if-changed=proto/ddpm.proto");
    tonic_prost_build::configure()
        // Bulk tensor data travels as reference-counted `Bytes`, never copied
        // into a Vec on decode.
        .bytes(".")
        .compile_protos(&["proto/ddpm.proto"], &["proto"])?;
    Ok(())
}
