pub mod error; pub mod io; pub mod model; pub mod ext4;
