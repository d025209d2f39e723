// @peculiar/x509 relies on decorator metadata.
import "reflect-metadata"
