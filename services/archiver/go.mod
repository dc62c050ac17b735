module github.com/announcer/announcer/services/archiver

go 1.26.8

require github.com/announcer/announcer/pkg v0.0.0

replace github.com/announcer/announcer/pkg => ../../pkg
