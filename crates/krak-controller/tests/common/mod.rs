pub mod memstore;
