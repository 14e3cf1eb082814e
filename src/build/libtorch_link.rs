// Shared by the build scripts of the three packages (included with `include!`).
//
// torch-sys (links = "tch") exports the directory of the libtorch it linked
// as DEP_TCH_LIBTORCH_LIB to packages that depend on it directly. We bake it
// into every binary as a RUNPATH so `ddpm`, `ddpm-coord` and `ddpm-worker`
// start without LD_LIBRARY_PATH; a RUNPATH still yields to LD_LIBRARY_PATH,
// which is how the same binaries run against another machine's libtorch.
//
// `--no-as-needed -ltorch` keeps libtorch.so (and through it
// libtorch_cuda.so) in DT_NEEDED even though no Rust symbol refers to it;
// without it the CUDA backend is never loaded and `--gpu N` cannot work.
fn link_libtorch() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if os == "linux" {
        if let Some(dir) = std::env::var_os("DEP_TCH_LIBTORCH_LIB") {
            println!("cargo:rustc-link-arg=-Wl,-rpath,{}", dir.to_string_lossy());
        }
        println!("cargo:rustc-link-arg=-Wl,--enable-new-dtags");
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch");
    }
}
