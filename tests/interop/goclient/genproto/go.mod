// The Go stubs of proto/ (jetgate.dev/genproto, the go_package prefix of jetgate's .proto
// files), generated into this folder by `make goclient`; the client uses it through the
// replace directive in ../go.mod. Only this file is committed.
module jetgate.dev/genproto

go 1.24
